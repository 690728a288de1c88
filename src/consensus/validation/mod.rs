//! Validation rules as pure functions.
//!
//! - Context-free: `check_header`, `check_transaction`, `check_block` need
//!   nothing but the data and the network parameters.
//! - Contextual: `check_header_contextual` needs the block's place in the
//!   chain (`BlockContext`); `check_block_contextual` also needs the UTXO set
//!   through the `UtxoView` trait. Signatures of a block are verified in
//!   parallel on rayon's pool.
//!
//! Every rejection is a typed error naming the rule that failed. An error of
//! the UTXO view itself (`BlockError::UtxoView`) is not a consensus failure:
//! the block may be valid and must not be marked invalid because of it.

use std::collections::HashMap;
use std::hash::BuildHasher;

use rayon::prelude::*;

use super::address::PubKeyHash;
use super::amount::Amount;
use super::block::{Block, BlockHeader};
use super::hash::{BlockHash, Hash256, Txid};
use super::keys::{verify_signature, SignatureError, SignatureVerifier};
use super::limits::{LOCKTIME_THRESHOLD, MAX_BLOCK_SIZE, MAX_TX_SIZE};
use super::params::ChainParams;
use super::pow::{block_subsidy, meets_target, target_from_compact, CompactTargetError};
use super::transaction::{sighash, OutPoint, Transaction, TxIn, TxOut};
use crate::collections::{FastHashMap, FastHashSet};
use crate::encoding::Encode;

/// An unspent output with what consensus needs to spend it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Utxo {
    pub output: TxOut,
    /// Height of the block that created it.
    pub height: u32,
    pub is_coinbase: bool,
}

/// A failure of the storage behind a `UtxoView` (not a consensus rule).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("UTXO lookup failed: {0}")]
pub struct UtxoViewError(pub String);

/// Read access to the UTXO set at the parent of the block being validated.
pub trait UtxoView {
    fn utxo(&self, outpoint: &OutPoint) -> Result<Option<Utxo>, UtxoViewError>;
}

impl<S: BuildHasher> UtxoView for HashMap<OutPoint, Utxo, S> {
    fn utxo(&self, outpoint: &OutPoint) -> Result<Option<Utxo>, UtxoViewError> {
        Ok(self.get(outpoint).copied())
    }
}

/// A transaction rule that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("transaction has no inputs")]
    NoInputs,
    #[error("transaction has no outputs")]
    NoOutputs,
    #[error("transaction is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("output {index} amount {amount} units is above the maximum money")]
    OutputOutOfRange { index: usize, amount: u64 },
    #[error("sum of outputs is above the maximum money")]
    TotalOutputOutOfRange,
    #[error("input {outpoint} is spent twice in the transaction")]
    DuplicateInput { outpoint: OutPoint },
    #[error("input {index} is a coinbase input outside a coinbase transaction")]
    UnexpectedCoinbaseInput { index: usize },
    #[error("input {index} spends the null outpoint")]
    NullPrevout { index: usize },
    #[error("a coinbase transaction is only valid as the first transaction of a block")]
    UnexpectedCoinbase,
    #[error("input {outpoint} is unknown or already spent")]
    MissingOrSpentInput { outpoint: OutPoint },
    #[error("input {outpoint} spends a coinbase of height {coinbase_height} at height {spend_height}, before maturity of {maturity} blocks")]
    ImmatureCoinbase {
        outpoint: OutPoint,
        coinbase_height: u32,
        spend_height: u32,
        maturity: u32,
    },
    #[error("input {index}: public key hash {actual:?} is not the output's owner {owner:?}")]
    WrongOwner {
        index: usize,
        owner: PubKeyHash,
        actual: PubKeyHash,
    },
    #[error("input {index}: {reason}")]
    BadSignature {
        index: usize,
        reason: SignatureError,
    },
    #[error("sum of inputs is above the maximum money")]
    InputsOutOfRange,
    #[error("inputs of {inputs} units are less than outputs of {outputs} units")]
    InputsBelowOutputs { inputs: u64, outputs: u64 },
    #[error("lock time {lock_time} is not yet reached")]
    NotFinal { lock_time: u32 },
}

/// A block rule that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("bad difficulty bits: {0}")]
    BadBitsEncoding(CompactTargetError),
    #[error("difficulty bits {bits:#010x} are easier than the network limit")]
    BitsAboveLimit { bits: u32 },
    #[error("block hash {hash} does not meet its target {bits:#010x}")]
    HighHash { hash: Hash256, bits: u32 },
    #[error("block is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("block has no transactions")]
    NoTransactions,
    #[error("first transaction is not a coinbase")]
    FirstNotCoinbase,
    #[error("transaction {index} is a second coinbase")]
    ExtraCoinbase { index: usize },
    #[error("merkle root {header} in header, {computed} computed")]
    BadMerkleRoot { header: Hash256, computed: Hash256 },
    #[error("merkle tree is mutated (duplicated subtree, CVE-2012-2459)")]
    MutatedMerkle,
    #[error("transaction {txid} appears twice")]
    DuplicateTransaction { txid: Txid },
    #[error("transaction {index} ({txid}) is invalid: {error}")]
    InvalidTransaction {
        index: usize,
        txid: Txid,
        error: TxError,
    },
    #[error("difficulty bits {found:#010x}, expected {expected:#010x}")]
    BadBits { expected: u32, found: u32 },
    #[error("block time {time} is not after the median time past {median_time_past}")]
    TimeTooOld { time: u32, median_time_past: u32 },
    #[error("block time {time} is more than allowed ahead of now (max {max})")]
    TimeTooNew { time: u32, max: u32 },
    #[error("coinbase claims height {found}, block is at height {expected}")]
    BadCoinbaseHeight { expected: u32, found: u32 },
    #[error("coinbase pays {claimed} units, subsidy plus fees allow {allowed}")]
    CoinbaseTooLarge { claimed: u64, allowed: u64 },
    #[error("block fees overflow the money range")]
    FeesOutOfRange,
    #[error(transparent)]
    UtxoView(#[from] UtxoViewError),
}

impl BlockError {
    /// Whether the block itself broke a rule (as opposed to a failed lookup),
    /// so that it may be marked invalid and its sender punished.
    pub fn is_consensus_failure(&self) -> bool {
        !matches!(self, BlockError::UtxoView(_))
    }
}

/// Where a block sits: what its header must satisfy beyond itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockContext {
    pub height: u32,
    /// Bits required by the difficulty adjustment (`pow::next_work_required`).
    pub expected_bits: u32,
    /// Median time of the previous blocks (`pow::median_time_past`).
    pub median_time_past: u32,
    /// The validating node's clock, Unix seconds.
    pub now: u32,
}

/// Whether block signatures are verified. `Off` exists for benchmarks that
/// measure everything else, and is never used by the node for unknown blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureChecks {
    On,
    Off,
}

/// Context-free header checks: usable bits, within the network limit, and a
/// hash that meets them.
pub fn check_header(header: &BlockHeader, params: &ChainParams) -> Result<(), BlockError> {
    check_header_hashed(header, &header.hash(), params)
}

/// `check_header` for a header whose hash (`header.hash()`) the caller
/// already has.
pub fn check_header_hashed(
    header: &BlockHeader,
    hash: &BlockHash,
    params: &ChainParams,
) -> Result<(), BlockError> {
    let target = target_from_compact(header.bits).map_err(BlockError::BadBitsEncoding)?;
    if target > params.pow_limit() {
        return Err(BlockError::BitsAboveLimit { bits: header.bits });
    }
    if !meets_target(hash, &target) {
        return Err(BlockError::HighHash {
            hash: *hash,
            bits: header.bits,
        });
    }
    Ok(())
}

/// Header checks that depend on the chain: difficulty and timestamps.
pub fn check_header_contextual(
    header: &BlockHeader,
    ctx: &BlockContext,
    params: &ChainParams,
) -> Result<(), BlockError> {
    if header.bits != ctx.expected_bits {
        return Err(BlockError::BadBits {
            expected: ctx.expected_bits,
            found: header.bits,
        });
    }
    if header.time <= ctx.median_time_past {
        return Err(BlockError::TimeTooOld {
            time: header.time,
            median_time_past: ctx.median_time_past,
        });
    }
    let max = ctx.now.saturating_add(params.max_future_block_time_secs);
    if header.time > max {
        return Err(BlockError::TimeTooNew {
            time: header.time,
            max,
        });
    }
    Ok(())
}

/// Context-free transaction checks.
pub fn check_transaction(tx: &Transaction) -> Result<(), TxError> {
    if tx.inputs.is_empty() {
        return Err(TxError::NoInputs);
    }
    if tx.outputs.is_empty() {
        return Err(TxError::NoOutputs);
    }
    let size = tx.encoded_len();
    if size > MAX_TX_SIZE {
        return Err(TxError::TooLarge {
            size,
            limit: MAX_TX_SIZE,
        });
    }
    for (index, output) in tx.outputs.iter().enumerate() {
        if !output.amount.is_valid() {
            return Err(TxError::OutputOutOfRange {
                index,
                amount: output.amount.units(),
            });
        }
    }
    if tx.total_output().is_none() {
        return Err(TxError::TotalOutputOutOfRange);
    }
    if tx.is_coinbase() {
        return Ok(());
    }
    let mut seen = FastHashSet::with_capacity_and_hasher(tx.inputs.len(), Default::default());
    for (index, input) in tx.inputs.iter().enumerate() {
        match input {
            TxIn::Coinbase { .. } => return Err(TxError::UnexpectedCoinbaseInput { index }),
            TxIn::Spend { prevout, .. } => {
                if prevout.is_null() {
                    return Err(TxError::NullPrevout { index });
                }
                if !seen.insert(*prevout) {
                    return Err(TxError::DuplicateInput { outpoint: *prevout });
                }
            }
        }
    }
    Ok(())
}

/// Context-free block checks: header, size, coinbase placement, merkle root,
/// unique txids, and every transaction's own checks.
pub fn check_block(block: &Block, params: &ChainParams) -> Result<(), BlockError> {
    check_header(&block.header, params)?;
    check_block_body(block)
}

/// `check_block` without the header's proof of work: what a block template
/// must already satisfy before it is mined (Bitcoin Core's `CheckBlock` with
/// `fCheckPOW` off).
pub fn check_block_body(block: &Block) -> Result<(), BlockError> {
    if block.transactions.is_empty() {
        return Err(BlockError::NoTransactions);
    }
    let size = block.encoded_len();
    if size > MAX_BLOCK_SIZE {
        return Err(BlockError::TooLarge {
            size,
            limit: MAX_BLOCK_SIZE,
        });
    }
    if !block.transactions[0].is_coinbase() {
        return Err(BlockError::FirstNotCoinbase);
    }
    if let Some(index) = block.transactions[1..]
        .iter()
        .position(Transaction::is_coinbase)
    {
        return Err(BlockError::ExtraCoinbase { index: index + 1 });
    }
    let txids = block.txids();
    let (computed, mutated) = super::merkle::merkle_root(&txids);
    if computed != block.header.merkle_root {
        return Err(BlockError::BadMerkleRoot {
            header: block.header.merkle_root,
            computed,
        });
    }
    if mutated {
        return Err(BlockError::MutatedMerkle);
    }
    let mut seen = FastHashSet::with_capacity_and_hasher(txids.len(), Default::default());
    for txid in &txids {
        if !seen.insert(*txid) {
            return Err(BlockError::DuplicateTransaction { txid: *txid });
        }
    }
    for (index, tx) in block.transactions.iter().enumerate() {
        check_transaction(tx).map_err(|error| BlockError::InvalidTransaction {
            index,
            txid: txids[index],
            error,
        })?;
    }
    Ok(())
}

/// Whether `tx` may be included in a block at `height` whose median time past
/// is `median_time_past` (lock times below `LOCKTIME_THRESHOLD` are heights).
pub fn is_final(tx: &Transaction, height: u32, median_time_past: u32) -> bool {
    let limit = if tx.lock_time < LOCKTIME_THRESHOLD {
        height
    } else {
        median_time_past
    };
    tx.lock_time == 0 || tx.lock_time < limit
}

/// Checks a non-coinbase transaction against the outputs it spends (given in
/// input order) at `spend_height`: maturity, ownership and amounts. Returns
/// the fee. Signatures are checked apart (`verify_tx_signatures`).
pub fn check_tx_spends(
    tx: &Transaction,
    spent: &[Utxo],
    spend_height: u32,
    params: &ChainParams,
) -> Result<Amount, TxError> {
    if tx.is_coinbase() {
        return Err(TxError::UnexpectedCoinbase);
    }
    debug_assert_eq!(tx.inputs.len(), spent.len());
    for (index, (input, utxo)) in tx.inputs.iter().zip(spent).enumerate() {
        let TxIn::Spend {
            prevout, pubkey, ..
        } = input
        else {
            return Err(TxError::UnexpectedCoinbaseInput { index });
        };
        if utxo.is_coinbase && spend_height < utxo.height.saturating_add(params.coinbase_maturity) {
            return Err(TxError::ImmatureCoinbase {
                outpoint: *prevout,
                coinbase_height: utxo.height,
                spend_height,
                maturity: params.coinbase_maturity,
            });
        }
        let actual = PubKeyHash::of_pubkey(pubkey);
        if actual != utxo.output.owner {
            return Err(TxError::WrongOwner {
                index,
                owner: utxo.output.owner,
                actual,
            });
        }
    }
    let inputs = Amount::checked_sum(spent.iter().map(|u| u.output.amount))
        .ok_or(TxError::InputsOutOfRange)?;
    let outputs = tx.total_output().ok_or(TxError::TotalOutputOutOfRange)?;
    inputs
        .checked_sub(outputs)
        .ok_or(TxError::InputsBelowOutputs {
            inputs: inputs.units(),
            outputs: outputs.units(),
        })
}

/// One signature to verify.
struct SignatureJob<'a> {
    tx_index: usize,
    input_index: usize,
    digest: Hash256,
    pubkey: &'a [u8; 33],
    signature: &'a [u8; 64],
}

fn signature_jobs<'a>(
    tx_index: usize,
    tx: &'a Transaction,
    spent: &[Utxo],
) -> impl Iterator<Item = SignatureJob<'a>> + 'a {
    let spent_outputs: Vec<TxOut> = spent.iter().map(|u| u.output).collect();
    output_signature_jobs(tx_index, tx, &spent_outputs)
}

/// `signature_jobs`, given the outputs spent.
fn output_signature_jobs<'a>(
    tx_index: usize,
    tx: &'a Transaction,
    spent_outputs: &[TxOut],
) -> impl Iterator<Item = SignatureJob<'a>> + 'a {
    let commitment = tx.sighash_commitment(spent_outputs);
    tx.inputs
        .iter()
        .enumerate()
        .filter_map(move |(input_index, input)| match input {
            TxIn::Spend {
                pubkey, signature, ..
            } => Some(SignatureJob {
                tx_index,
                input_index,
                digest: sighash(&commitment, input_index as u32),
                pubkey,
                signature,
            }),
            TxIn::Coinbase { .. } => None,
        })
}

/// Verifies every input signature of one transaction, in input order,
/// given the outputs its inputs spend.
pub fn verify_tx_signatures(tx: &Transaction, spent: &[TxOut]) -> Result<(), TxError> {
    for job in output_signature_jobs(0, tx, spent) {
        verify_signature(job.pubkey, job.signature, &job.digest.0).map_err(|reason| {
            TxError::BadSignature {
                index: job.input_index,
                reason,
            }
        })?;
    }
    Ok(())
}

/// What connecting a valid block spends and earns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSpends {
    /// Every output the block spends, in block order, with its outpoint: the
    /// undo data needed to disconnect the block.
    pub spent: Vec<(OutPoint, Utxo)>,
    /// Sum of the fees of the block's transactions.
    pub fees: Amount,
}

/// Checks a block that passed `check_block` against its place in the chain
/// and the UTXO set at its parent: header context, coinbase height and value,
/// lock times, and every input (existence, maturity, owner, amounts,
/// signatures). Transactions may spend outputs of earlier transactions in the
/// same block; an output may be spent once.
pub fn check_block_contextual(
    block: &Block,
    ctx: &BlockContext,
    params: &ChainParams,
    view: &dyn UtxoView,
    signature_checks: SignatureChecks,
) -> Result<BlockSpends, BlockError> {
    let verify = match signature_checks {
        SignatureChecks::On => Some(verify_signature as SignatureVerifier),
        SignatureChecks::Off => None,
    };
    check_block_contextual_inner(block, ctx, params, view, verify)
}

/// `check_block_contextual` with signatures checked by `verify`: the
/// `limits` benchmark validates one block with libsecp256k1
/// (`keys::verify_signature`, what the node uses) and with the k256
/// reference (`keys::verify_signature_k256`) in the same run.
pub fn check_block_contextual_verifying_with(
    block: &Block,
    ctx: &BlockContext,
    params: &ChainParams,
    view: &dyn UtxoView,
    verify: SignatureVerifier,
) -> Result<BlockSpends, BlockError> {
    check_block_contextual_inner(block, ctx, params, view, Some(verify))
}

fn check_block_contextual_inner(
    block: &Block,
    ctx: &BlockContext,
    params: &ChainParams,
    view: &dyn UtxoView,
    verify: Option<SignatureVerifier>,
) -> Result<BlockSpends, BlockError> {
    let checked = check_block_spends(block, ctx, params, view)?;
    if let Some(verify) = verify {
        verify_block_signatures(block, &checked, verify)?;
    }
    Ok(checked.spends)
}

/// A block checked in everything `check_block_contextual` checks but its
/// signatures, with what verifying them needs.
#[derive(Debug, Clone)]
pub struct CheckedSpends {
    pub spends: BlockSpends,
    /// The outputs each transaction spends, in input order (none for the
    /// coinbase).
    per_tx_spent: Vec<Vec<Utxo>>,
    txids: Vec<Txid>,
}

impl CheckedSpends {
    /// The block's txids, in block order.
    pub fn txids(&self) -> &[Txid] {
        &self.txids
    }
}

/// The first half of `check_block_contextual`: header context, coinbase
/// height and value, lock times, and every input's existence, maturity,
/// owner and amounts. A block that passes is valid if and only if
/// `verify_block_signatures` then passes, so the signatures can be checked
/// alongside other work on the block (the chain computes its index rows
/// and digest meanwhile) without changing any verdict: every error this
/// half finds is reported before any signature error, as in one pass.
pub fn check_block_spends(
    block: &Block,
    ctx: &BlockContext,
    params: &ChainParams,
    view: &dyn UtxoView,
) -> Result<CheckedSpends, BlockError> {
    check_header_contextual(&block.header, ctx, params)?;
    let coinbase = &block.transactions[0];
    let coinbase_height = coinbase.coinbase_height().unwrap_or(u32::MAX);
    if coinbase_height != ctx.height {
        return Err(BlockError::BadCoinbaseHeight {
            expected: ctx.height,
            found: coinbase_height,
        });
    }

    let txids = block.txids();
    let mut created: FastHashMap<OutPoint, Utxo> = FastHashMap::default();
    let mut spent_in_block: FastHashSet<OutPoint> = FastHashSet::default();
    let mut all_spent = Vec::new();
    let mut per_tx_spent: Vec<Vec<Utxo>> = Vec::with_capacity(block.transactions.len());
    let mut fees = Amount::ZERO;

    for (index, tx) in block.transactions.iter().enumerate() {
        let fail = |error| BlockError::InvalidTransaction {
            index,
            txid: txids[index],
            error,
        };
        if !is_final(tx, ctx.height, ctx.median_time_past) {
            return Err(fail(TxError::NotFinal {
                lock_time: tx.lock_time,
            }));
        }
        if index > 0 {
            let mut spent = Vec::with_capacity(tx.inputs.len());
            for input in &tx.inputs {
                let outpoint = input.prevout();
                let utxo = if spent_in_block.contains(&outpoint) {
                    None
                } else if let Some(utxo) = created.get(&outpoint) {
                    Some(*utxo)
                } else {
                    view.utxo(&outpoint)?
                };
                let utxo = utxo.ok_or_else(|| fail(TxError::MissingOrSpentInput { outpoint }))?;
                spent_in_block.insert(outpoint);
                all_spent.push((outpoint, utxo));
                spent.push(utxo);
            }
            let fee = check_tx_spends(tx, &spent, ctx.height, params).map_err(fail)?;
            fees = fees.checked_add(fee).ok_or(BlockError::FeesOutOfRange)?;
            per_tx_spent.push(spent);
        } else {
            per_tx_spent.push(Vec::new());
        }
        for (vout, output) in tx.outputs.iter().enumerate() {
            created.insert(
                OutPoint::new(txids[index], vout as u32),
                Utxo {
                    output: *output,
                    height: ctx.height,
                    is_coinbase: index == 0,
                },
            );
        }
    }

    let allowed = block_subsidy(params, ctx.height)
        .checked_add(fees)
        .ok_or(BlockError::FeesOutOfRange)?;
    let claimed = coinbase
        .total_output()
        .unwrap_or(Amount::from_units(u64::MAX));
    if claimed > allowed {
        return Err(BlockError::CoinbaseTooLarge {
            claimed: claimed.units(),
            allowed: allowed.units(),
        });
    }

    Ok(CheckedSpends {
        spends: BlockSpends {
            spent: all_spent,
            fees,
        },
        per_tx_spent,
        txids,
    })
}

/// The second half of `check_block_contextual`: every input signature of
/// a block that passed `check_block_spends`, in parallel on rayon's pool.
/// Reports the first failing input in block order.
pub fn verify_block_signatures(
    block: &Block,
    checked: &CheckedSpends,
    verify: SignatureVerifier,
) -> Result<(), BlockError> {
    let jobs: Vec<SignatureJob<'_>> = block
        .transactions
        .par_iter()
        .zip(checked.per_tx_spent.par_iter())
        .enumerate()
        .skip(1)
        .flat_map_iter(|(i, (tx, spent))| signature_jobs(i, tx, spent))
        .collect();
    let failure = jobs.par_iter().find_map_first(|job| {
        verify(job.pubkey, job.signature, &job.digest.0)
            .err()
            .map(|reason| (job.tx_index, job.input_index, reason))
    });
    match failure {
        Some((index, input_index, reason)) => Err(BlockError::InvalidTransaction {
            index,
            txid: checked.txids[index],
            error: TxError::BadSignature {
                index: input_index,
                reason,
            },
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
