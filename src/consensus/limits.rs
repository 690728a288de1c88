//! Consensus size limits. Each one bounds what a decoder may allocate and what
//! a block may cost to validate; all other limits derive from these.

/// Largest serialized block, header included. One megabyte keeps a block's
/// validation well under the 10-second target spacing on one core (see the
/// `limits` benchmark) and a block download short on slow links.
pub const MAX_BLOCK_SIZE: usize = 1_000_000;

/// Largest serialized transaction: it must fit in a block beside the header.
pub const MAX_TX_SIZE: usize = MAX_BLOCK_SIZE - crate::consensus::block::HEADER_LEN;

/// Encoded size of an input that spends an output: outpoint (36), compressed
/// public key (33), compact signature (64).
pub const SPEND_INPUT_LEN: usize = 36 + 33 + 64;

/// Encoded size of the coinbase input: null outpoint (36), height (4), extra
/// nonce (8).
pub const COINBASE_INPUT_LEN: usize = 36 + 4 + 8;

/// Encoded size of an output: amount (8) and owner hash (20).
pub const OUTPUT_LEN: usize = 8 + 20;

/// Smallest encodable transaction: version, two empty counts, lock time. Used
/// to bound the transaction count of a block before allocating.
pub const MIN_TX_LEN: usize = 4 + 1 + 1 + 4;

/// Most inputs a transaction can hold inside `MAX_TX_SIZE`.
pub const MAX_TX_INPUTS: usize = MAX_TX_SIZE / COINBASE_INPUT_LEN;

/// Most outputs a transaction can hold inside `MAX_TX_SIZE`.
pub const MAX_TX_OUTPUTS: usize = MAX_TX_SIZE / OUTPUT_LEN;

/// Most transactions a block can hold inside `MAX_BLOCK_SIZE`.
pub const MAX_BLOCK_TXS: usize = MAX_BLOCK_SIZE / MIN_TX_LEN;

/// Number of previous block times whose median a new block must exceed.
pub const MEDIAN_TIME_SPAN: usize = 11;

/// Lock times below this are block heights, at or above it Unix times.
pub const LOCKTIME_THRESHOLD: u32 = 500_000_000;
