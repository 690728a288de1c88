//! The mempool: valid transactions waiting for a block.
//!
//! A transaction is accepted only if it is valid against the UTXO set at the
//! tip plus the pool itself (chains of unconfirmed transactions are allowed),
//! spends nothing another pool transaction spends (first seen wins), pays at
//! least the minimum fee rate, and fits the pool's byte limit, which evicts
//! the lowest fee rates (with their descendants) to make room. Policy beyond
//! consensus: no output below `DUST_LIMIT`, at most `MAX_ANCESTORS`
//! unconfirmed ancestors and `MAX_DESCENDANTS` unconfirmed descendants per
//! transaction, at most `MAX_STANDARD_TX_SIZE` bytes.
//!
//! Consistency with the tip: the pool holds its own receiver of chain events
//! and applies every pending one (`catch_up`) before any operation. It
//! checks transactions against a [`TipState`]: the chain itself (its
//! writer, which sends its events before it returns) or a reader's
//! [`ChainView`]. The pool remembers the tip its events brought it to, and
//! `catch_up` says whether that is the state's tip: a reader whose view is a
//! block behind or ahead takes a fresh view and tries again, so one answer
//! never mixes two tips. After a reorganisation (or missed
//! events) the whole pool is checked again against the new tip together
//! with the transactions of the disconnected blocks, parents before
//! children (`rebuild`), so it never holds a transaction spending an output
//! that no longer exists, and every parent-child link is rebuilt.

pub mod persist;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast::{self, error::TryRecvError};

use crate::chain::{unix_now, Chain, ChainError, ChainEvent, ChainView};
use crate::consensus::address::PubKeyHash;
use crate::consensus::amount::Amount;
use crate::consensus::block::Block;
use crate::consensus::hash::BlockHash;
use crate::consensus::hash::Txid;
use crate::consensus::limits::{MAX_BLOCK_SIZE, OUTPUT_LEN, SPEND_INPUT_LEN};
use crate::consensus::params::ChainParams;
use crate::consensus::transaction::{OutPoint, Transaction, TxIn, TxOut};
use crate::consensus::validation::{
    check_transaction, check_tx_spends, is_final, verify_tx_signatures, BlockContext,
    SignatureChecks, TxError, Utxo, UtxoView,
};
use crate::encoding::Encode;
use crate::store::schema::script_hash;

/// Transactions a `catch_up_step` judges at most: about 5 ms of UTXO
/// reads (and, for transactions returning from disconnected blocks,
/// signature checks) on this project's 2-core reference machine, so the
/// protocol thread and REST readers never hold the pool's lock long.
pub const REBUILD_STEP_CANDIDATES: usize = 128;
/// Most candidates a rebuild may still have queued for a newcomer to be
/// judged at once, the rest of the rebuild first (under the pool's lock: a
/// few steps' milliseconds). With more queued, a newcomer cannot be judged
/// now (`TipMoved`, or handed back) until the rebuild's own steps bring the
/// queue down: finishing a full pool's rebuild for it took seconds, on
/// whichever thread the newcomer came through (the protocol thread, the
/// chain task), and any peer could send one after every reorganisation.
pub const REBUILD_LEFT_FOR_A_NEWCOMER: usize = 4 * REBUILD_STEP_CANDIDATES;

/// A rebuild of the pool under way: what is left to judge, parents first,
/// and what its end reports.
struct Rebuild {
    /// The `offered` returning transactions first, then the former entries.
    queue: std::vec::IntoIter<(u32, Transaction, SignatureChecks)>,
    /// The returning transactions judged so far (all of them at the end).
    returning_ids: Vec<Txid>,
    former_ids: Vec<Txid>,
    former_owners: Vec<(Txid, Vec<(PubKeyHash, i64)>)>,
    reason: RemovalReason,
    offered: usize,
}

/// Minimum fee rate, in base units per 1000 bytes: 1 unit per byte, so a
/// typical 1-in-2-out transaction (about 200 bytes) pays at least 200 units.
pub const MIN_RELAY_FEE_RATE: u64 = 1_000;
/// Default memory limit of the pool (`--mempool-max-mb`), counted as the
/// heap its entries and indexes take (`entry_usage`), as Bitcoin Core's
/// `-maxmempool` (300 MB) counts its dynamic memory usage: 300 MiB, about 300 000
/// typical 1-in-2-out transactions (1 KB each in memory, 200 bytes
/// encoded).
pub const DEFAULT_MAX_MEMPOOL_BYTES: usize = 300 << 20;
/// A hash table takes up to about twice its entries' bytes (it grows by
/// doubling and is at most seven eighths full).
const TABLE_SLACK: usize = 2;
/// What the allocator takes beyond each allocation's bytes (its header and
/// rounding).
const ALLOCATION_OVERHEAD: usize = 16;
/// A key of an ordered set (`by_rate`, an owner's keys), with its share of
/// the tree's node.
const ORDERED_KEY_BYTES: usize = 64;
/// A transaction unconfirmed this long leaves the pool.
pub const MEMPOOL_EXPIRY_SECS: u32 = 14 * 24 * 60 * 60;
/// Largest transaction the pool accepts: a tenth of a block, so one
/// transaction cannot crowd out a block's worth of others.
pub const MAX_STANDARD_TX_SIZE: usize = 100_000;
/// Most unconfirmed ancestors a pool transaction may have, not counting
/// itself (Bitcoin Core counts the transaction itself in its limit of 25, so
/// it allows 24): bounds the work of building templates, which walk every
/// ancestor of every candidate.
pub const MAX_ANCESTORS: usize = 25;
/// Most unconfirmed descendants a pool transaction may have, not counting
/// itself: bounds the work of eviction and of removing a conflicted
/// transaction, which walk every descendant.
pub const MAX_DESCENDANTS: usize = 25;
/// Fee rate, in base units per 1000 bytes, that an output must be able to
/// pay for its own creation and spending: three times the minimum relay
/// rate, as Bitcoin Core's dust relay fee.
pub const DUST_RELAY_FEE_RATE: u64 = 3 * MIN_RELAY_FEE_RATE;
/// Smallest output amount the pool accepts, in base units: the cost of the
/// output (28 bytes) and of the input that will spend it (133 bytes) at
/// `DUST_RELAY_FEE_RATE`, 483 units. A smaller output costs more to spend
/// than it is worth, so it would stay in every node's UTXO set for good,
/// paid for by one cheap transaction.
pub const DUST_LIMIT: u64 = (OUTPUT_LEN + SPEND_INPUT_LEN) as u64 * DUST_RELAY_FEE_RATE / 1000;

/// Capacity of the channel of pool events (`Mempool::subscribe_events`):
/// the event hub reads it at once, so it lags only if the node's runtime
/// stalls; a lagging reader is told how many events it missed.
pub const POOL_EVENT_CHANNEL_CAPACITY: usize = 4096;

/// Why a transaction left the pool, as far as the pool can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalReason {
    /// It is in a block that connected.
    Confirmed,
    /// A block spent one of its inputs (or an ancestor's).
    Conflict,
    /// Older than `MEMPOOL_EXPIRY_SECS`.
    Expired,
    /// The pool was full and its fee rate (or an ancestor's) was the lowest.
    Evicted,
    /// Not valid at the new tip after a reorganisation (it spent an output
    /// the new chain lacks or spends).
    ReorgDropped,
    /// Found invalid when the pool was checked again (missed chain events, a
    /// block template that failed validation).
    Invalid,
}

impl RemovalReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            RemovalReason::Confirmed => "confirmed",
            RemovalReason::Conflict => "conflict",
            RemovalReason::Expired => "expired",
            RemovalReason::Evicted => "evicted",
            RemovalReason::ReorgDropped => "reorg-dropped",
            RemovalReason::Invalid => "invalid",
        }
    }
}

/// A transaction entered or left the pool, with what it does to each
/// address it pays or spends from (net, in base units), for the event
/// stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolEvent {
    Added {
        txid: Txid,
        fee: u64,
        size: usize,
        owners: Vec<(PubKeyHash, i64)>,
    },
    Removed {
        txid: Txid,
        reason: RemovalReason,
        owners: Vec<(PubKeyHash, i64)>,
    },
}

/// Net change a transaction makes to each address it touches.
fn owner_changes(outputs: &[TxOut], spent: &[TxOut]) -> Vec<(PubKeyHash, i64)> {
    let mut changes: HashMap<PubKeyHash, i128> = HashMap::new();
    for o in outputs {
        *changes.entry(o.owner).or_default() += o.amount.units() as i128;
    }
    for o in spent {
        *changes.entry(o.owner).or_default() -= o.amount.units() as i128;
    }
    let mut changes: Vec<(PubKeyHash, i64)> = changes
        .into_iter()
        .map(|(owner, net)| (owner, net.clamp(i64::MIN as i128, i64::MAX as i128) as i64))
        .collect();
    changes.sort();
    changes
}

/// Why a transaction was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MempoolError {
    /// The state given is not at the tip the pool follows (a reader's view
    /// taken just before or after a block): take a fresh view and retry.
    #[error("the chain moved while the transaction was checked; try again")]
    TipMoved,
    #[error("transaction {0} is already in the mempool")]
    AlreadyInPool(Txid),
    #[error("transaction {0} is already confirmed")]
    AlreadyConfirmed(Txid),
    #[error("coinbase transactions are only valid in blocks")]
    Coinbase,
    #[error("transaction is {size} bytes, above the relay limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("invalid transaction: {0}")]
    Invalid(TxError),
    #[error("input {outpoint} is already spent by mempool transaction {by}")]
    Conflict { outpoint: OutPoint, by: Txid },
    #[error("input {0} is unknown or already spent")]
    MissingInput(OutPoint),
    #[error("fee rate {rate} units/kB is below the minimum of {min}")]
    FeeTooLow { rate: u64, min: u64 },
    #[error("output {index} pays {amount} units, below the dust limit of {limit}")]
    Dust {
        index: usize,
        amount: u64,
        limit: u64,
    },
    #[error("transaction has {count} unconfirmed ancestors, above the limit of {limit}")]
    TooManyAncestors { count: usize, limit: usize },
    #[error("pool transaction {ancestor} would have more than {limit} unconfirmed descendants")]
    TooManyDescendants { ancestor: Txid, limit: usize },
    #[error("the mempool is full and the fee rate {rate} units/kB is too low to enter")]
    Full { rate: u64 },
    #[error("transaction is not final at the next height")]
    NotFinal,
    #[error("store: {0}")]
    Store(String),
}

impl MempoolError {
    /// Whether a pool refusal means the transaction breaks a rule that holds
    /// at every tip: what it says is fixed by its own bytes and the outputs it
    /// names (an outpoint's amount and owner never change). Refusals that
    /// depend on the tip (a missing or immature input, a lock time, a
    /// conflict) or on this node's policy (fees, dust, size, chains, a full
    /// pool) are never blamed on the sender.
    pub fn breaks_consensus(&self) -> bool {
        use crate::consensus::validation::TxError;
        match self {
            MempoolError::Coinbase => true,
            MempoolError::Invalid(error) => match error {
                TxError::NoInputs
                | TxError::NoOutputs
                | TxError::TooLarge { .. }
                | TxError::OutputOutOfRange { .. }
                | TxError::TotalOutputOutOfRange
                | TxError::DuplicateInput { .. }
                | TxError::UnexpectedCoinbaseInput { .. }
                | TxError::NullPrevout { .. }
                | TxError::UnexpectedCoinbase
                | TxError::WrongOwner { .. }
                | TxError::BadSignature { .. }
                | TxError::InputsOutOfRange
                | TxError::InputsBelowOutputs { .. } => true,
                TxError::MissingOrSpentInput { .. }
                | TxError::ImmatureCoinbase { .. }
                | TxError::NotFinal { .. } => false,
            },
            _ => false,
        }
    }

    /// A stable code for the REST API.
    pub fn code(&self) -> &'static str {
        match self {
            MempoolError::TipMoved => "tip-moved",
            MempoolError::AlreadyInPool(_) => "already-in-mempool",
            MempoolError::AlreadyConfirmed(_) => "already-confirmed",
            MempoolError::Coinbase => "coinbase",
            MempoolError::TooLarge { .. } => "tx-too-large",
            MempoolError::Invalid(_) => "invalid",
            MempoolError::Conflict { .. } => "mempool-conflict",
            MempoolError::MissingInput(_) => "missing-inputs",
            MempoolError::FeeTooLow { .. } => "fee-too-low",
            MempoolError::Dust { .. } => "dust",
            MempoolError::TooManyAncestors { .. } | MempoolError::TooManyDescendants { .. } => {
                "too-long-mempool-chain"
            }
            MempoolError::Full { .. } => "mempool-full",
            MempoolError::NotFinal => "non-final",
            MempoolError::Store(_) => "internal",
        }
    }
}

/// The heap bytes a pool entry of `tx` with `parents` pool parents takes,
/// indexes included: what the pool's memory limit counts. An estimate from
/// the types' sizes and the tables' slack; a typical 1-in-2-out
/// transaction of 200 bytes counts about 1 KB.
pub fn entry_usage(tx: &Transaction, parents: usize) -> usize {
    use std::mem::size_of;
    let (inputs, outputs) = (tx.inputs.len(), tx.outputs.len());
    // The entries map's slot, and the transaction behind its `Arc`.
    let entry = TABLE_SLACK * (size_of::<Txid>() + size_of::<MempoolEntry>())
        + size_of::<Transaction>()
        + 2 * size_of::<usize>()
        + ALLOCATION_OVERHEAD;
    // Its inputs and outputs, the outputs its inputs spend (kept in the
    // entry), and the `spends` map's slot of each input.
    let lists = inputs * (size_of::<TxIn>() + size_of::<TxOut>())
        + outputs * size_of::<TxOut>()
        + 3 * ALLOCATION_OVERHEAD
        + inputs * TABLE_SLACK * (size_of::<OutPoint>() + size_of::<Txid>());
    // Its parents' set and its place in each parent's children.
    let links = 2 * parents * TABLE_SLACK * size_of::<Txid>() + 2 * ALLOCATION_OVERHEAD;
    // `by_rate`, and one key per owner it pays or spends from (at most one
    // per input and output); the owner's own slot is counted apart, while
    // the owner has an entry (`OWNER_SLOT_USAGE`).
    let indexes = ORDERED_KEY_BYTES * (1 + inputs + outputs);
    entry + lists + links + indexes
}

/// Packages in a row that do not fit after which a template stops looking,
/// once the block is within `TEMPLATE_FULL_ENOUGH_BYTES` of full (Bitcoin
/// Core's `MAX_CONSECUTIVE_FAILURES` and full-enough rule): in a full pool
/// the rest rarely fits, and each look works out a package again.
const TEMPLATE_MAX_CONSECUTIVE_MISSES: usize = 1_000;
const TEMPLATE_FULL_ENOUGH_BYTES: usize = 4_000;

/// The heap bytes of one owner's slots, beyond its entries' own keys: its
/// owner pool in `by_owner` (one key held inline) and its `by_script_hash`
/// entry, with the tables' slack. Counted in the pool's usage while the
/// owner has an entry: a transaction paying thousands of fresh addresses
/// takes this for each.
const OWNER_SLOT_USAGE: usize = TABLE_SLACK
    * (std::mem::size_of::<(PubKeyHash, OwnerPool)>()
        + std::mem::size_of::<([u8; 32], PubKeyHash)>());

/// A pool transaction and what the pool knows about it.
#[derive(Debug, Clone)]
pub struct MempoolEntry {
    pub tx: Arc<Transaction>,
    pub txid: Txid,
    pub fee: Amount,
    pub size: usize,
    /// Heap bytes it takes in the pool (`entry_usage`).
    pub usage: usize,
    /// Unix seconds when it entered the pool.
    pub time: u32,
    /// The outputs its inputs spend, in input order.
    pub spent: Vec<TxOut>,
    parents: HashSet<Txid>,
    children: HashSet<Txid>,
}

/// What `Mempool::check_new` found of a newcomer, for `Mempool::insert`.
struct Checked {
    txid: Txid,
    size: usize,
    fee: Amount,
    rate: u64,
    usage: usize,
    /// The outputs its inputs spend, in input order.
    spent: Vec<TxOut>,
    parents: HashSet<Txid>,
}

impl MempoolEntry {
    /// Fee per 1000 bytes.
    pub fn fee_rate(&self) -> u64 {
        fee_rate(self.fee, self.size)
    }
}

/// Judges `tx` against `chain` as `Mempool::try_accept` does, with the
/// pool's lock held for its checks and its insertion but not for the
/// signature checks between them: relay, the chain task and REST readers
/// take the same lock, and a transaction of 100 kB has hundreds of
/// signatures (tens of milliseconds). `Err(tx)` when the pool cannot judge
/// against `chain` now.
pub fn try_accept_unlocked(
    pool: &Mutex<Mempool>,
    chain: &dyn TipState,
    tx: Transaction,
) -> Result<Result<Txid, MempoolError>, Transaction> {
    let prepared = pool.lock().expect("mempool lock").try_prepare(chain, &tx);
    let spent = match prepared {
        None => return Err(tx),
        Some(Err(e)) => return Ok(Err(e)),
        Some(Ok(spent)) => spent,
    };
    if let Err(e) = verify_tx_signatures(&tx, &spent) {
        return Ok(Err(MempoolError::Invalid(e)));
    }
    pool.lock()
        .expect("mempool lock")
        .try_accept_verified(chain, tx, &spent)
}

/// As `try_accept_unlocked`, with `TipMoved` when the pool cannot judge.
pub fn accept_unlocked(
    pool: &Mutex<Mempool>,
    chain: &dyn TipState,
    tx: Transaction,
) -> Result<Txid, MempoolError> {
    try_accept_unlocked(pool, chain, tx).unwrap_or(Err(MempoolError::TipMoved))
}

/// Every owner a transaction pays or spends from, once each.
#[cfg(test)]
fn owners(outputs: &[TxOut], spent: &[TxOut]) -> HashSet<PubKeyHash> {
    outputs.iter().chain(spent).map(|o| o.owner).collect()
}

/// What one transaction adds to the pending totals of each owner it pays
/// or spends from (`tx_count` 1 for each).
fn owner_shares(outputs: &[TxOut], spent: &[TxOut]) -> HashMap<PubKeyHash, PendingStats> {
    let mut shares: HashMap<PubKeyHash, PendingStats> = HashMap::new();
    for output in outputs {
        let share = shares.entry(output.owner).or_default();
        share.funded_txo_count += 1;
        share.funded_txo_sum += u128::from(output.amount.units());
    }
    for output in spent {
        let share = shares.entry(output.owner).or_default();
        share.spent_txo_count += 1;
        share.spent_txo_sum += u128::from(output.amount.units());
    }
    for share in shares.values_mut() {
        share.tx_count = 1;
    }
    shares
}

fn fee_rate(fee: Amount, size: usize) -> u64 {
    fee.units().saturating_mul(1000) / size.max(1) as u64
}

/// Pending (unconfirmed) totals of one address, in esplora's terms. The
/// sums are u128, as the confirmed ones: pool transactions can pass the
/// same coins through one address many times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PendingStats {
    pub funded_txo_count: u64,
    pub funded_txo_sum: u128,
    pub spent_txo_count: u64,
    pub spent_txo_sum: u128,
    pub tx_count: u64,
}

impl PendingStats {
    /// What the pool adds to (or takes from) the confirmed balance. Every
    /// unit it adds is an unspent pool output and every unit it takes a
    /// confirmed or pool output, so it stays within ±MAX_MONEY.
    pub fn net(&self) -> i64 {
        let net = self.funded_txo_sum as i128 - self.spent_txo_sum as i128;
        i64::try_from(net).expect("a pending balance change is within the money supply")
    }

    fn add(&mut self, share: &PendingStats) {
        self.funded_txo_count += share.funded_txo_count;
        self.funded_txo_sum += share.funded_txo_sum;
        self.spent_txo_count += share.spent_txo_count;
        self.spent_txo_sum += share.spent_txo_sum;
        self.tx_count += share.tx_count;
    }

    /// Takes away a share `add` put in (so never below zero).
    fn remove(&mut self, share: &PendingStats) {
        let below = "an owner's pending totals hold every share added to them";
        self.funded_txo_count = self
            .funded_txo_count
            .checked_sub(share.funded_txo_count)
            .expect(below);
        self.funded_txo_sum = self
            .funded_txo_sum
            .checked_sub(share.funded_txo_sum)
            .expect(below);
        self.spent_txo_count = self
            .spent_txo_count
            .checked_sub(share.spent_txo_count)
            .expect(below);
        self.spent_txo_sum = self
            .spent_txo_sum
            .checked_sub(share.spent_txo_sum)
            .expect(below);
        self.tx_count = self.tx_count.checked_sub(share.tx_count).expect(below);
    }
}

/// One owner's pool transactions, in the order they were first seen, and
/// their pending totals, both kept as entries come and go: an address
/// query costs its page (or nothing, for the totals), however many pool
/// transactions the owner has. One owner can hold every entry of a full
/// pool (hundreds of thousands), and address routes take the pool's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OwnerPool {
    /// `(first seen, txid)` of every entry paying or spending from the owner.
    keys: OwnerKeys,
    stats: PendingStats,
}

impl OwnerPool {
    fn new(key: (u32, Txid)) -> OwnerPool {
        OwnerPool {
            keys: OwnerKeys::One(key),
            stats: PendingStats::default(),
        }
    }
}

/// The keys of one owner's entries. Most owners have one (an address paid
/// once), held inline: a transaction paying thousands of fresh addresses
/// costs the index a map slot per address, not a tree node of 400 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OwnerKeys {
    One((u32, Txid)),
    /// Two or more.
    Many(BTreeSet<(u32, Txid)>),
}

impl OwnerKeys {
    fn len(&self) -> usize {
        match self {
            OwnerKeys::One(_) => 1,
            OwnerKeys::Many(keys) => keys.len(),
        }
    }

    fn insert(&mut self, key: (u32, Txid)) {
        match self {
            OwnerKeys::One(only) if *only == key => {}
            OwnerKeys::One(only) => *self = OwnerKeys::Many(BTreeSet::from([*only, key])),
            OwnerKeys::Many(keys) => {
                keys.insert(key);
            }
        }
    }

    /// Removes `key`: whether it was there, and whether the owner has no
    /// keys left (then the caller drops it from the index).
    fn remove(&mut self, key: &(u32, Txid)) -> (bool, bool) {
        match self {
            OwnerKeys::One(only) => {
                let last = only == key;
                (last, last)
            }
            OwnerKeys::Many(keys) => {
                let removed = keys.remove(key);
                if keys.len() == 1 {
                    let only = *keys.first().expect("one key");
                    *self = OwnerKeys::One(only);
                }
                (removed, false)
            }
        }
    }

    /// The keys strictly below `upper` (all of them for `Unbounded`), in
    /// order either way.
    fn below(&self, upper: Bound<(u32, Txid)>) -> impl DoubleEndedIterator<Item = &(u32, Txid)> {
        let (one, many) = match self {
            OwnerKeys::One(only) => {
                let below = match upper {
                    Bound::Excluded(limit) => *only < limit,
                    _ => true,
                };
                (below.then_some(only), None)
            }
            OwnerKeys::Many(keys) => (None, Some(keys.range((Bound::Unbounded, upper)))),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

pub struct Mempool {
    entries: HashMap<Txid, MempoolEntry>,
    /// Which pool transaction spends each outpoint.
    spends: HashMap<OutPoint, Txid>,
    /// Entries by fee rate, lowest first, for eviction.
    by_rate: BTreeSet<(u64, Txid)>,
    /// Encoded bytes of the pool's transactions.
    bytes: usize,
    /// Heap bytes of its entries and indexes (`entry_usage`), which
    /// `max_bytes` bounds.
    usage: usize,
    max_bytes: usize,
    events: broadcast::Receiver<ChainEvent>,
    /// The tip the applied events brought the pool to.
    tip: BlockHash,
    /// Transactions of disconnected blocks, re-added once the chain settles.
    pending_readd: Vec<(u32, Vec<Transaction>)>,
    /// Events were missed: the next `catch_up` at the tip checks every
    /// entry again.
    missed_events: bool,
    /// Transactions that entered the pool and are not yet announced.
    announce: Vec<Txid>,
    /// Bumped by every addition and removal: miners compare it to tell
    /// whether their template is behind the pool.
    changes: u64,
    /// Pool transactions by every owner they pay or spend from, with the
    /// owner's pending totals, so address queries cost the page they
    /// return, not a scan of the pool or of the owner's entries.
    by_owner: HashMap<PubKeyHash, OwnerPool>,
    /// The owners of `by_owner` by their script hash (esplora's
    /// `scripthash`), for owners the chain has not seen yet.
    by_script_hash: HashMap<[u8; 32], PubKeyHash>,
    /// Where additions and removals are announced (the event stream).
    /// Sending never blocks; with no receiver it costs nothing.
    pool_events: broadcast::Sender<Arc<PoolEvent>>,
    /// A rebuild under way, judged a step at a time (see `catch_up_step`).
    rebuild: Option<Rebuild>,
    /// Set while `rebuild` empties and refills the pool: its own
    /// additions and removals are not news; it reports the difference.
    quiet: bool,
}

/// What the pool checks a transaction against: the chain at one tip.
pub trait TipState {
    fn params(&self) -> &'static ChainParams;
    fn tip_hash(&self) -> BlockHash;
    fn tip_height(&self) -> u32;
    /// Median time past of the tip (lock times are judged against it).
    fn tip_median_time_past(&self) -> Result<u32, ChainError>;
    fn utxo(&self, outpoint: &OutPoint) -> Result<Option<Utxo>, ChainError>;
    fn is_confirmed(&self, txid: &Txid) -> Result<bool, ChainError>;
    /// The context a child of the tip is validated in.
    fn tip_context(&self) -> Result<BlockContext, ChainError>;
    /// The UTXO set at the tip, for checking a whole block.
    fn utxo_view(&self) -> &dyn UtxoView;
    /// Whether this is the chain itself (the writer), not a reader's view.
    fn is_writer(&self) -> bool;
    /// Whether the tip is where the chain is going: no branch with more
    /// work waits to be connected (no reorganisation under way).
    fn settled(&self) -> bool;
}

impl TipState for Chain {
    fn params(&self) -> &'static ChainParams {
        Chain::params(self)
    }
    fn tip_hash(&self) -> BlockHash {
        self.tip().hash
    }
    fn tip_height(&self) -> u32 {
        self.height()
    }
    fn tip_median_time_past(&self) -> Result<u32, ChainError> {
        Ok(self
            .context_after(&self.tip().hash)
            .map_or(0, |ctx| ctx.median_time_past))
    }
    fn utxo(&self, outpoint: &OutPoint) -> Result<Option<Utxo>, ChainError> {
        // Through the chain's write-back cache: during catch-up the store
        // is behind the tip.
        Ok(Chain::utxo(self, outpoint)?)
    }
    fn is_confirmed(&self, txid: &Txid) -> Result<bool, ChainError> {
        Ok(Chain::tx_location(self, txid)?.is_some())
    }
    fn tip_context(&self) -> Result<BlockContext, ChainError> {
        self.context_after(&self.tip().hash)
            .ok_or_else(|| ChainError::Inconsistent("the tip is not indexed".into()))
    }
    fn utxo_view(&self) -> &dyn UtxoView {
        self
    }
    fn is_writer(&self) -> bool {
        true
    }
    fn settled(&self) -> bool {
        Chain::settled(self)
    }
}

impl TipState for ChainView {
    fn params(&self) -> &'static ChainParams {
        ChainView::params(self)
    }
    fn tip_hash(&self) -> BlockHash {
        self.tip().hash
    }
    fn tip_height(&self) -> u32 {
        self.height()
    }
    fn tip_median_time_past(&self) -> Result<u32, ChainError> {
        self.median_time_past()
    }
    fn utxo(&self, outpoint: &OutPoint) -> Result<Option<Utxo>, ChainError> {
        Ok(self.store().utxo(outpoint)?)
    }
    fn is_confirmed(&self, txid: &Txid) -> Result<bool, ChainError> {
        Ok(self.store().tx_location(txid)?.is_some())
    }
    fn tip_context(&self) -> Result<BlockContext, ChainError> {
        self.context_after_tip()
    }
    fn utxo_view(&self) -> &dyn UtxoView {
        self.store()
    }
    fn is_writer(&self) -> bool {
        false
    }
    fn settled(&self) -> bool {
        self.published().settled && self.published().tip.0 == self.tip().hash
    }
}

impl Mempool {
    pub fn new(chain: &Chain, max_bytes: usize) -> Mempool {
        Mempool {
            entries: HashMap::new(),
            spends: HashMap::new(),
            by_rate: BTreeSet::new(),
            bytes: 0,
            usage: 0,
            max_bytes,
            events: chain.subscribe(),
            tip: chain.tip().hash,
            pending_readd: Vec::new(),
            missed_events: false,
            announce: Vec::new(),
            changes: 0,
            by_owner: HashMap::new(),
            by_script_hash: HashMap::new(),
            pool_events: broadcast::channel(POOL_EVENT_CHANNEL_CAPACITY).0,
            quiet: false,
            rebuild: None,
        }
    }

    /// Receives every addition to and removal from the pool from now on.
    pub fn subscribe_events(&self) -> broadcast::Receiver<Arc<PoolEvent>> {
        self.pool_events.subscribe()
    }

    fn announce_event(&self, event: PoolEvent) {
        if !self.quiet && self.pool_events.receiver_count() > 0 {
            let _ = self.pool_events.send(Arc::new(event));
        }
    }

    /// A counter that moves whenever the pool's contents change.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Encoded bytes of the pool's transactions.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Heap bytes the pool's entries and indexes take (what its limit
    /// counts).
    /// The limit of `usage` (`--mempool-max-mb`).
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    pub fn usage(&self) -> usize {
        self.usage
    }

    pub fn get(&self, txid: &Txid) -> Option<&MempoolEntry> {
        self.entries.get(txid)
    }

    pub fn contains(&self, txid: &Txid) -> bool {
        self.entries.contains_key(txid)
    }

    pub fn txids(&self) -> Vec<Txid> {
        let mut ids: Vec<Txid> = self.entries.keys().copied().collect();
        ids.sort();
        ids
    }

    /// The txids of the `limit` entries of highest fee rate, read from the
    /// fee-rate index (costing `limit`, not the pool), each after those of
    /// its pool parents among them and otherwise best first: a peer judges
    /// them in the order given, and a child before its parent would be
    /// refused for a missing input.
    pub fn best_txids(&self, limit: usize) -> Vec<Txid> {
        let best: Vec<Txid> = self
            .by_rate
            .iter()
            .rev()
            .take(limit)
            .map(|(_, txid)| *txid)
            .collect();
        // Depth among the chosen: 0 without a chosen parent, else one more
        // than its deepest chosen parent (at most `MAX_ANCESTORS`). A
        // stable sort by depth puts parents first.
        let chosen: HashSet<Txid> = best.iter().copied().collect();
        let mut depth: HashMap<Txid, usize> = HashMap::with_capacity(best.len());
        fn depth_of(
            pool: &Mempool,
            txid: &Txid,
            chosen: &HashSet<Txid>,
            depth: &mut HashMap<Txid, usize>,
        ) -> usize {
            if let Some(known) = depth.get(txid) {
                return *known;
            }
            let found = pool.entries.get(txid).map_or(0, |entry| {
                entry
                    .parents
                    .iter()
                    .filter(|parent| chosen.contains(*parent))
                    .map(|parent| depth_of(pool, parent, chosen, depth) + 1)
                    .max()
                    .unwrap_or(0)
            });
            depth.insert(*txid, found);
            found
        }
        // Each depth is looked up once, not at every comparison of the sort.
        let mut ordered: Vec<(usize, Txid)> = best
            .iter()
            .map(|txid| (depth_of(self, txid, &chosen, &mut depth), *txid))
            .collect();
        ordered.sort_by_key(|(depth, _)| *depth);
        ordered.into_iter().map(|(_, txid)| txid).collect()
    }

    pub fn entries(&self) -> impl Iterator<Item = &MempoolEntry> {
        self.entries.values()
    }

    /// Which pool transaction spends `outpoint`, if any.
    pub fn spender_of(&self, outpoint: &OutPoint) -> Option<Txid> {
        self.spends.get(outpoint).copied()
    }

    /// Txids that entered the pool since the last call, for relay.
    pub fn take_announcements(&mut self) -> Vec<Txid> {
        let mut ids = std::mem::take(&mut self.announce);
        ids.retain(|id| self.entries.contains_key(id));
        ids
    }

    /// Applies every chain event not yet applied, and says whether the pool
    /// is now at `chain`'s tip. After a reorganisation (a disconnected
    /// block) or missed events, rebuilds the pool against the new tip with
    /// the disconnected blocks' transactions, lowest block first
    /// (`rebuild`), but only once `chain` is at the tip the events reached:
    /// a reader's view a block behind must not judge the pool.
    pub fn catch_up(&mut self, chain: &dyn TipState) -> bool {
        if !self.ready_at_tip(chain) {
            return false;
        }
        loop {
            self.start_owed_rebuild();
            while !self.rebuild_step(chain, usize::MAX) {}
            if !self.missed_events && self.pending_readd.is_empty() {
                return true;
            }
        }
    }

    /// As `catch_up`, but judges at most `REBUILD_STEP_CANDIDATES`
    /// transactions of a rebuild owed after a reorganisation (the pool is
    /// emptied and refilled with what is still valid: a 100-block
    /// reorganisation can return thousands), so that whoever holds the
    /// pool's lock holds it for milliseconds; the pool answers from what is
    /// back so far in between. True once the pool is at `chain`'s tip with
    /// nothing left to judge.
    pub fn catch_up_step(&mut self, chain: &dyn TipState) -> bool {
        // Blocks connected or disconnected while a rebuild is under way
        // apply to the whole pool, as without steps: the rebuild finishes
        // first (rare: a rebuild lasts a fraction of a second).
        if self.rebuild.is_some() && !self.events.is_empty() {
            self.finish_rebuild(chain);
        }
        if !self.ready_at_tip(chain) {
            return false;
        }
        if self.rebuild.is_some() && (self.missed_events || !self.pending_readd.is_empty()) {
            // Another rebuild is owed (missed events): finish both now.
            return self.catch_up(chain);
        }
        if self.rebuild.is_none() {
            self.start_owed_rebuild();
        }
        self.rebuild_step(chain, REBUILD_STEP_CANDIDATES)
    }

    /// Applies the chain's events, and says whether the pool is at
    /// `chain`'s tip where a rebuild it owes may run.
    fn ready_at_tip(&mut self, chain: &dyn TipState) -> bool {
        self.apply_events(chain);
        if self.missed_events && chain.is_writer() {
            self.tip = chain.tip_hash();
        }
        if self.tip != chain.tip_hash() {
            return false;
        }
        let owes_rebuild = self.missed_events || !self.pending_readd.is_empty();
        // In the middle of a reorganisation, judging the returning
        // transactions at the fork point would drop some for good (a
        // coinbase spend mature at the new tip, a lock time).
        !owes_rebuild || chain.settled()
    }

    /// Judges what is left of a rebuild under way, whatever the chain's
    /// state: before a transaction from outside is judged (first seen
    /// stays first: a queued transaction comes back before a double spend
    /// of it, a child finds its queued parent), and before the pool is
    /// saved.
    pub fn finish_rebuild(&mut self, chain: &dyn TipState) {
        while !self.rebuild_step(chain, usize::MAX) {}
    }

    /// Whether a newcomer can be judged against `chain` now: the pool at
    /// its tip, and a rebuild under way finished first if little of it is
    /// left (`REBUILD_LEFT_FOR_A_NEWCOMER`).
    fn ready_for_newcomer(&mut self, chain: &dyn TipState) -> bool {
        let long_rebuild = |pool: &Mempool| {
            pool.rebuild
                .as_ref()
                .is_some_and(|r| r.queue.len() > REBUILD_LEFT_FOR_A_NEWCOMER)
        };
        // Checked first too: stepping to the tip finishes a rebuild under
        // way when blocks came meanwhile.
        if long_rebuild(self) || !self.step_to_tip(chain) || long_rebuild(self) {
            return false;
        }
        self.finish_rebuild(chain);
        true
    }

    /// A `catch_up_step`, then whether the pool is at `chain`'s tip with no
    /// rebuild owed that has not started: what a transaction is judged
    /// against is the tip, while the pool may still be refilling.
    fn step_to_tip(&mut self, chain: &dyn TipState) -> bool {
        self.catch_up_step(chain);
        self.tip == chain.tip_hash() && !self.missed_events && self.pending_readd.is_empty()
    }

    /// The transactions a rebuild under way has yet to judge, with their
    /// times (what `mempool.dat` keeps beside the entries).
    pub fn queued(&self) -> impl Iterator<Item = (u32, &Transaction)> {
        self.rebuild
            .iter()
            .flat_map(|r| r.queue.as_slice().iter().map(|(time, tx, _)| (*time, tx)))
    }

    /// Whether a rebuild is under way or owed: a `catch_up_step` has work.
    pub fn rebuild_pending(&self) -> bool {
        self.rebuild.is_some() || self.missed_events || !self.pending_readd.is_empty()
    }

    /// Starts the rebuild that missed events or disconnected blocks call
    /// for, unless one is under way (it finishes first).
    fn start_owed_rebuild(&mut self) {
        if self.rebuild.is_some() {
            return;
        }
        if std::mem::take(&mut self.missed_events) || !self.pending_readd.is_empty() {
            let mut blocks = std::mem::take(&mut self.pending_readd);
            blocks.sort_by_key(|(height, _)| *height);
            let reason = if blocks.is_empty() {
                RemovalReason::Invalid
            } else {
                RemovalReason::ReorgDropped
            };
            let returning: Vec<Transaction> = blocks.into_iter().flat_map(|(_, txs)| txs).collect();
            self.start_rebuild(returning, reason);
        }
    }

    /// As `catch_up` when that is cheap: applies the events, and says
    /// whether the pool is at `chain`'s tip with no rebuild owed (after a
    /// reorganisation). `false` leaves the rebuild to a `catch_up` where
    /// long work may run.
    pub fn catch_up_without_rebuild(&mut self, chain: &dyn TipState) -> bool {
        self.apply_events(chain);
        self.tip == chain.tip_hash()
            && !self.missed_events
            && self.pending_readd.is_empty()
            && self.rebuild.is_none()
    }

    /// Applies the chain's pending events: removals now, the transactions
    /// of disconnected blocks kept for the next rebuild.
    fn apply_events(&mut self, chain: &dyn TipState) {
        let mut missed_events = false;
        loop {
            match self.events.try_recv() {
                Ok(ChainEvent::BlockConnected { block, hash, .. }) => {
                    self.remove_for_block(&block);
                    self.tip = hash;
                }
                Ok(ChainEvent::BlockDisconnected { block, height, .. }) => {
                    self.pending_readd
                        .push((height, block.transactions[1..].to_vec()));
                    self.tip = block.header.prev_hash;
                }
                Err(TryRecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "mempool missed chain events: revalidating");
                    missed_events = true;
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        if missed_events {
            // Which tip the pool is at is unknown now. The writer's tip is
            // the truth (its events are sent before it returns); a reader's
            // view may trail it, so with a view the pool waits for the
            // writer's next catch-up.
            self.tip = if chain.is_writer() {
                chain.tip_hash()
            } else {
                BlockHash::ZERO
            };
            self.missed_events = true;
        }
    }

    /// The tip the pool's applied events reached.
    pub fn tip(&self) -> BlockHash {
        self.tip
    }

    /// Validates and adds a transaction. Returns its txid.
    pub fn accept(&mut self, chain: &dyn TipState, tx: Transaction) -> Result<Txid, MempoolError> {
        self.try_accept(chain, tx)
            .unwrap_or(Err(MempoolError::TipMoved))
    }

    /// As `accept`, but hands the transaction back (`Err`) when the pool
    /// cannot judge it against `chain` now (not at its tip, or a rebuild
    /// owed), for a caller with another judge to ask: the protocol thread,
    /// whose views trail the chain task's tip during a catch-up.
    pub fn try_accept(
        &mut self,
        chain: &dyn TipState,
        tx: Transaction,
    ) -> Result<Result<Txid, MempoolError>, Transaction> {
        self.try_admit(chain, tx, None)
    }

    /// As `try_accept` without the signature checks: every other check of
    /// `tx`, and the outputs it spends, for the caller to check its
    /// signatures with the pool's lock released and hand it to
    /// `try_accept_verified` (see `try_accept_unlocked`). `None` when
    /// the pool cannot judge against `chain` now. Changes nothing but the
    /// pool's catching up.
    pub fn try_prepare(
        &mut self,
        chain: &dyn TipState,
        tx: &Transaction,
    ) -> Option<Result<Vec<TxOut>, MempoolError>> {
        if !self.ready_for_newcomer(chain) {
            return None;
        }
        Some(self.check_new(chain, tx).map(|checked| checked.spent))
    }

    /// As `try_prepare`, with `TipMoved` when the pool cannot judge.
    pub fn prepare(
        &mut self,
        chain: &dyn TipState,
        tx: &Transaction,
    ) -> Result<Vec<TxOut>, MempoolError> {
        self.try_prepare(chain, tx)
            .unwrap_or(Err(MempoolError::TipMoved))
    }

    /// Adds `tx`, whose signatures hold for the outputs `verified` (what
    /// `try_prepare` found). It is checked again as a newcomer, since the
    /// pool or the tip may have moved meanwhile; should its inputs now
    /// spend other outputs than `verified`, its signatures are checked
    /// here. `Err(tx)` as `try_accept`.
    pub fn try_accept_verified(
        &mut self,
        chain: &dyn TipState,
        tx: Transaction,
        verified: &[TxOut],
    ) -> Result<Result<Txid, MempoolError>, Transaction> {
        self.try_admit(chain, tx, Some(verified))
    }

    /// A newcomer judged against `chain` (`Err(tx)` when it cannot be
    /// now), its signatures checked unless they hold for `verified`, the
    /// outputs its inputs spend now; announced once added.
    fn try_admit(
        &mut self,
        chain: &dyn TipState,
        tx: Transaction,
        verified: Option<&[TxOut]>,
    ) -> Result<Result<Txid, MempoolError>, Transaction> {
        if !self.ready_for_newcomer(chain) {
            return Err(tx);
        }
        let result = self.check_new(chain, &tx).and_then(|checked| {
            if verified != Some(&checked.spent[..]) {
                verify_tx_signatures(&tx, &checked.spent).map_err(MempoolError::Invalid)?;
            }
            self.insert(tx, checked, unix_now())
        });
        if let Ok(txid) = result {
            self.announce.push(txid);
        }
        Ok(result)
    }

    /// As `try_accept_verified`, with `TipMoved` when the pool cannot judge.
    pub fn accept_verified(
        &mut self,
        chain: &dyn TipState,
        tx: Transaction,
        verified: &[TxOut],
    ) -> Result<Txid, MempoolError> {
        self.try_accept_verified(chain, tx, verified)
            .unwrap_or(Err(MempoolError::TipMoved))
    }

    /// Validates and adds `tx` as having entered the pool at `time`.
    /// `signatures` is `Off` only for a transaction that was in this pool
    /// before (re-checked by `rebuild`): its signatures depend only on the
    /// transaction and the outputs it spends, which its outpoints fix.
    fn accept_inner(
        &mut self,
        chain: &dyn TipState,
        tx: Transaction,
        time: u32,
        signatures: SignatureChecks,
    ) -> Result<Txid, MempoolError> {
        let checked = self.check_new(chain, &tx)?;
        if signatures == SignatureChecks::On {
            verify_tx_signatures(&tx, &checked.spent).map_err(MempoolError::Invalid)?;
        }
        self.insert(tx, checked, time)
    }

    /// Every check of a newcomer but its signatures, against `chain` and
    /// the pool as they are: what `insert` needs, with the outputs it
    /// spends (for its signatures). Changes nothing.
    fn check_new(&self, chain: &dyn TipState, tx: &Transaction) -> Result<Checked, MempoolError> {
        let txid = tx.txid();
        if self.entries.contains_key(&txid) {
            return Err(MempoolError::AlreadyInPool(txid));
        }
        if tx.is_coinbase() {
            return Err(MempoolError::Coinbase);
        }
        check_transaction(tx).map_err(MempoolError::Invalid)?;
        let size = tx.encoded_len();
        if size > MAX_STANDARD_TX_SIZE {
            return Err(MempoolError::TooLarge {
                size,
                limit: MAX_STANDARD_TX_SIZE,
            });
        }
        if let Some((index, output)) = tx
            .outputs
            .iter()
            .enumerate()
            .find(|(_, o)| o.amount.units() < DUST_LIMIT)
        {
            return Err(MempoolError::Dust {
                index,
                amount: output.amount.units(),
                limit: DUST_LIMIT,
            });
        }
        let store_error = |e: ChainError| MempoolError::Store(e.to_string());
        if chain.is_confirmed(&txid).map_err(store_error)? {
            return Err(MempoolError::AlreadyConfirmed(txid));
        }
        let next_height = chain.tip_height() + 1;
        let mtp = chain.tip_median_time_past().map_err(store_error)?;
        if !is_final(tx, next_height, mtp) {
            return Err(MempoolError::NotFinal);
        }
        let mut spent = Vec::with_capacity(tx.inputs.len());
        let mut parents = HashSet::new();
        for input in &tx.inputs {
            let outpoint = input.prevout();
            if let Some(by) = self.spends.get(&outpoint) {
                return Err(MempoolError::Conflict { outpoint, by: *by });
            }
            let utxo = match self.entries.get(&outpoint.txid) {
                Some(parent) => {
                    parents.insert(parent.txid);
                    parent
                        .tx
                        .outputs
                        .get(outpoint.vout as usize)
                        .map(|output| Utxo {
                            output: *output,
                            height: next_height,
                            is_coinbase: false,
                        })
                }
                None => chain.utxo(&outpoint).map_err(store_error)?,
            };
            spent.push(utxo.ok_or(MempoolError::MissingInput(outpoint))?);
        }
        let ancestors = self.ancestors(&parents);
        if ancestors.len() > MAX_ANCESTORS {
            return Err(MempoolError::TooManyAncestors {
                count: ancestors.len(),
                limit: MAX_ANCESTORS,
            });
        }
        // With `tx`, each ancestor gains one descendant.
        if let Some(ancestor) = ancestors
            .iter()
            .find(|a| self.with_descendants(a).len() > MAX_DESCENDANTS)
        {
            return Err(MempoolError::TooManyDescendants {
                ancestor: *ancestor,
                limit: MAX_DESCENDANTS,
            });
        }
        let fee = check_tx_spends(tx, &spent, next_height, chain.params())
            .map_err(MempoolError::Invalid)?;
        let rate = fee_rate(fee, size);
        if rate < MIN_RELAY_FEE_RATE {
            return Err(MempoolError::FeeTooLow {
                rate,
                min: MIN_RELAY_FEE_RATE,
            });
        }
        // A full pool would evict the newcomer at once: say so before its
        // signatures cost anything (each rejected attempt would otherwise
        // cost a signature check per input, for free).
        let usage = entry_usage(tx, parents.len());
        let owners: HashSet<PubKeyHash> = tx
            .outputs
            .iter()
            .chain(spent.iter().map(|u| &u.output))
            .map(|o| o.owner)
            .collect();
        if !self.has_room_for(rate, usage, &owners, &ancestors) {
            return Err(MempoolError::Full { rate });
        }
        Ok(Checked {
            txid,
            size,
            fee,
            rate,
            usage,
            spent: spent.iter().map(|u| u.output).collect(),
            parents,
        })
    }

    /// Adds a newcomer `check_new` passed (and whose signatures hold).
    fn insert(
        &mut self,
        tx: Transaction,
        checked: Checked,
        time: u32,
    ) -> Result<Txid, MempoolError> {
        let Checked {
            txid,
            size,
            fee,
            rate,
            usage,
            spent,
            parents,
        } = checked;

        for input in &tx.inputs {
            self.spends.insert(input.prevout(), txid);
        }
        for parent in &parents {
            if let Some(p) = self.entries.get_mut(parent) {
                p.children.insert(txid);
            }
        }
        self.by_rate.insert((rate, txid));
        self.bytes += size;
        self.usage += usage;
        self.changes += 1;
        for (owner, share) in owner_shares(&tx.outputs, &spent) {
            let pool = self.by_owner.entry(owner).or_insert_with(|| {
                self.by_script_hash.insert(script_hash(&owner), owner);
                self.usage += OWNER_SLOT_USAGE;
                OwnerPool::new((time, txid))
            });
            pool.keys.insert((time, txid));
            pool.stats.add(&share);
        }
        if !self.quiet && self.pool_events.receiver_count() > 0 {
            self.announce_event(PoolEvent::Added {
                txid,
                fee: fee.units(),
                size,
                owners: owner_changes(&tx.outputs, &spent),
            });
        }
        self.entries.insert(
            txid,
            MempoolEntry {
                tx: Arc::new(tx),
                txid,
                fee,
                size,
                usage,
                time,
                spent,
                parents,
                children: HashSet::new(),
            },
        );
        self.trim();
        if !self.entries.contains_key(&txid) {
            return Err(MempoolError::Full { rate });
        }
        Ok(txid)
    }

    /// Whether an entry of fee rate `rate` taking `usage` bytes (its own,
    /// `entry_usage`), paying or spending from `owners`, with these pool
    /// ancestors, would survive the eviction its arrival causes (`trim`):
    /// the entries evicted first (lowest rate first, each with its
    /// descendants) must all pay less than it, none may be its ancestor,
    /// and they must free enough. An owner's slot counts where it does: the
    /// newcomer adds those of its owners the pool lacks, and an eviction
    /// gives one back only once every entry of the owner is gone and the
    /// newcomer does not use it. A tie in rate is refused, as the newcomer
    /// could go first. The walk stops once enough is freed: at most as
    /// many entries as the newcomer's bytes over the limit require, each
    /// with at most `MAX_DESCENDANTS` descendants.
    fn has_room_for(
        &self,
        rate: u64,
        usage: usize,
        owners: &HashSet<PubKeyHash>,
        ancestors: &HashSet<Txid>,
    ) -> bool {
        let new_slots = owners
            .iter()
            .filter(|owner| !self.by_owner.contains_key(owner))
            .count();
        let mut over =
            (self.usage + usage + new_slots * OWNER_SLOT_USAGE).saturating_sub(self.max_bytes);
        let mut evicted = HashSet::new();
        let mut gone_keys: HashMap<PubKeyHash, usize> = HashMap::new();
        for (lower, txid) in &self.by_rate {
            if over == 0 {
                return true;
            }
            if evicted.contains(txid) {
                continue;
            }
            if *lower >= rate {
                return false;
            }
            for gone in self.with_descendants(txid) {
                if ancestors.contains(&gone) {
                    return false;
                }
                if !evicted.insert(gone) {
                    continue;
                }
                let Some(entry) = self.entries.get(&gone) else {
                    continue;
                };
                let mut freed = entry.usage;
                for owner in owner_shares(&entry.tx.outputs, &entry.spent).keys() {
                    let count = gone_keys.entry(*owner).or_insert(0);
                    *count += 1;
                    let all_gone = self
                        .by_owner
                        .get(owner)
                        .is_some_and(|pool| pool.keys.len() == *count);
                    if all_gone && !owners.contains(owner) {
                        freed += OWNER_SLOT_USAGE;
                    }
                }
                over = over.saturating_sub(freed);
            }
        }
        over == 0
    }

    /// All unconfirmed ancestors of a set of parents.
    fn ancestors(&self, parents: &HashSet<Txid>) -> HashSet<Txid> {
        let mut found = HashSet::new();
        let mut queue: Vec<Txid> = parents.iter().copied().collect();
        while let Some(id) = queue.pop() {
            if found.insert(id) {
                if let Some(e) = self.entries.get(&id) {
                    queue.extend(e.parents.iter().copied());
                }
            }
        }
        found
    }

    /// `txid` and all its descendants.
    fn with_descendants(&self, txid: &Txid) -> Vec<Txid> {
        let mut found = Vec::new();
        let mut seen = HashSet::new();
        let mut queue = vec![*txid];
        while let Some(id) = queue.pop() {
            if seen.insert(id) {
                if let Some(e) = self.entries.get(&id) {
                    found.push(id);
                    queue.extend(e.children.iter().copied());
                }
            }
        }
        found
    }

    /// Removes one entry (not its descendants).
    fn remove_entry(&mut self, txid: &Txid, reason: RemovalReason) -> Option<MempoolEntry> {
        let entry = self.entries.remove(txid)?;
        self.changes += 1;
        if !self.quiet && self.pool_events.receiver_count() > 0 {
            self.announce_event(PoolEvent::Removed {
                txid: *txid,
                reason,
                owners: owner_changes(&entry.tx.outputs, &entry.spent),
            });
        }
        for (owner, share) in owner_shares(&entry.tx.outputs, &entry.spent) {
            if let Some(pool) = self.by_owner.get_mut(&owner) {
                let (removed, emptied) = pool.keys.remove(&(entry.time, *txid));
                if emptied {
                    self.by_owner.remove(&owner);
                    self.by_script_hash.remove(&script_hash(&owner));
                    self.usage -= OWNER_SLOT_USAGE;
                } else if removed {
                    pool.stats.remove(&share);
                }
            }
        }
        self.by_rate.remove(&(entry.fee_rate(), *txid));
        self.bytes -= entry.size;
        self.usage -= entry.usage;
        for input in &entry.tx.inputs {
            if self.spends.get(&input.prevout()) == Some(txid) {
                self.spends.remove(&input.prevout());
            }
        }
        for parent in &entry.parents {
            if let Some(p) = self.entries.get_mut(parent) {
                p.children.remove(txid);
            }
        }
        for child in &entry.children {
            if let Some(c) = self.entries.get_mut(child) {
                c.parents.remove(txid);
            }
        }
        Some(entry)
    }

    /// Removes `txid` and every descendant, for `reason`; returns how many
    /// left.
    pub fn remove_with_descendants(&mut self, txid: &Txid, reason: RemovalReason) -> usize {
        let ids = self.with_descendants(txid);
        for id in &ids {
            self.remove_entry(id, reason);
        }
        ids.len()
    }

    /// Evicts the lowest fee rates, with their descendants, until the pool
    /// fits its memory limit.
    fn trim(&mut self) {
        while self.usage > self.max_bytes {
            let Some(&(_, lowest)) = self.by_rate.iter().next() else {
                break;
            };
            self.remove_with_descendants(&lowest, RemovalReason::Evicted);
        }
    }

    /// A block connected: its transactions leave the pool, and so does every
    /// pool transaction that spends something the block spent (with its
    /// descendants).
    fn remove_for_block(&mut self, block: &Block) {
        // Nothing to remove from an empty pool: the usual case in a
        // catch-up, where this runs for thousands of blocks (hashing every
        // transaction of a 2 000-transaction block costs milliseconds, on
        // whichever thread catches the pool up, a REST reader's included).
        if self.entries.is_empty() {
            return;
        }
        for tx in &block.transactions[1..] {
            let txid = tx.txid();
            // Confirmed: its children stay, their parent is now in the chain.
            self.remove_entry(&txid, RemovalReason::Confirmed);
            for input in &tx.inputs {
                if let Some(conflict) = self.spends.get(&input.prevout()).copied() {
                    let removed = self.remove_with_descendants(&conflict, RemovalReason::Conflict);
                    tracing::info!(%conflict, removed, "removed mempool transactions conflicting with a block");
                }
            }
        }
    }

    /// Checks every entry against the chain at its tip again (after
    /// catching up with it) and drops, with their descendants, those no
    /// longer valid. Returns how many were dropped.
    pub fn revalidate(&mut self, chain: &dyn TipState) -> usize {
        self.catch_up(chain);
        self.rebuild(chain, Vec::new(), RemovalReason::Invalid).1
    }

    /// Empties the pool and accepts again `returning` (transactions of
    /// disconnected blocks, in block order, entering now) and every former
    /// entry (keeping its time), parents before children, against the tip:
    /// whatever spends an output that no longer exists, is immature or not
    /// final at the new height, or breaks a policy leaves; every link and
    /// index is rebuilt from scratch. Former entries' signatures are not
    /// verified again (see `accept_inner`). Returns how many of `returning`
    /// entered, and how many former entries did not come back.
    /// Former entries that do not come back are announced as removed for
    /// `reason`, returning transactions that enter as added.
    fn rebuild(
        &mut self,
        chain: &dyn TipState,
        returning: Vec<Transaction>,
        reason: RemovalReason,
    ) -> (usize, usize) {
        // One under way finishes first, with its own returning set.
        while !self.rebuild_step(chain, usize::MAX) {}
        self.start_rebuild(returning, reason);
        let mut outcome = (0, 0);
        while self.rebuild.is_some() {
            if let Some(done) = self.rebuild_step_counted(chain, usize::MAX) {
                outcome = done;
            }
        }
        outcome
    }

    /// Empties the pool into a rebuild's queue: the returning transactions
    /// and the former entries, parents first.
    fn start_rebuild(&mut self, returning: Vec<Transaction>, reason: RemovalReason) {
        let mut former: Vec<MempoolEntry> = self.entries.drain().map(|(_, e)| e).collect();
        let former_owners: Vec<(Txid, Vec<(PubKeyHash, i64)>)> =
            if self.pool_events.receiver_count() > 0 {
                former
                    .iter()
                    .map(|e| (e.txid, owner_changes(&e.tx.outputs, &e.spent)))
                    .collect()
            } else {
                Vec::new()
            };
        former.sort_by_key(|e| (e.time, e.txid));
        self.spends.clear();
        self.by_rate.clear();
        self.by_owner.clear();
        self.by_script_hash.clear();
        self.bytes = 0;
        self.usage = 0;
        self.changes += 1;
        let now = unix_now();
        let former_ids: Vec<Txid> = former.iter().map(|e| e.txid).collect();
        // Only the former entries need ordering. The returning transactions
        // come in block order, blocks by height: each spends only what
        // comes before it (a block's spends are in order), and none spends
        // a former entry (those were valid on top of them). This runs under
        // the pool's lock: ordering (and hashing) the 4 400 transactions a
        // 100-block reorganisation returns took 30 ms there, the rest of
        // the rebuild is judged in steps (`catch_up_step`).
        let former = parents_first(
            former
                .into_iter()
                .map(|e| (e.time, Arc::unwrap_or_clone(e.tx), SignatureChecks::Off))
                .collect(),
            |(_, tx, _)| tx,
        );
        let offered = returning.len();
        let candidates: Vec<(u32, Transaction, SignatureChecks)> = returning
            .into_iter()
            .map(|tx| (now, tx, SignatureChecks::On))
            .chain(former)
            .collect();
        self.rebuild = Some(Rebuild {
            queue: candidates.into_iter(),
            returning_ids: Vec::with_capacity(offered),
            former_ids,
            former_owners,
            reason,
            offered,
        });
    }

    /// Judges up to `budget` candidates of the rebuild under way; true when
    /// none is left (or none was under way).
    fn rebuild_step(&mut self, chain: &dyn TipState, budget: usize) -> bool {
        self.rebuild_step_counted(chain, budget);
        self.rebuild.is_none()
    }

    /// As `rebuild_step`; the (returned, dropped) counts when it finishes.
    fn rebuild_step_counted(
        &mut self,
        chain: &dyn TipState,
        budget: usize,
    ) -> Option<(usize, usize)> {
        let mut rebuild = self.rebuild.take()?;
        self.quiet = true;
        for (time, tx, signatures) in rebuild.queue.by_ref().take(budget) {
            if rebuild.returning_ids.len() < rebuild.offered {
                rebuild.returning_ids.push(tx.txid());
            }
            let _ = self.accept_inner(chain, tx, time, signatures);
        }
        self.quiet = false;
        if rebuild.queue.len() > 0 {
            self.rebuild = Some(rebuild);
            return None;
        }
        let returned = rebuild
            .returning_ids
            .iter()
            .filter(|id| self.contains(id))
            .count();
        let dropped = rebuild
            .former_ids
            .iter()
            .filter(|id| !self.contains(id))
            .count();
        for (txid, owners) in std::mem::take(&mut rebuild.former_owners) {
            if !self.contains(&txid) {
                self.announce_event(PoolEvent::Removed {
                    txid,
                    reason: rebuild.reason,
                    owners,
                });
            }
        }
        for txid in &rebuild.returning_ids {
            if let Some(e) = self.entries.get(txid) {
                let event = PoolEvent::Added {
                    txid: *txid,
                    fee: e.fee.units(),
                    size: e.size,
                    owners: owner_changes(&e.tx.outputs, &e.spent),
                };
                self.announce_event(event);
            }
        }
        tracing::info!(
            offered = rebuild.offered,
            returned,
            dropped,
            "mempool rebuilt on the new tip: disconnected transactions returned, invalid ones dropped"
        );
        Some((returned, dropped))
    }

    /// Drops entries older than `MEMPOOL_EXPIRY_SECS`.
    pub fn expire(&mut self, chain: &dyn TipState, now: u32) -> usize {
        self.catch_up(chain);
        let old: Vec<Txid> = self
            .entries
            .values()
            .filter(|e| now.saturating_sub(e.time) > MEMPOOL_EXPIRY_SECS)
            .map(|e| e.txid)
            .collect();
        old.iter()
            .map(|id| self.remove_with_descendants(id, RemovalReason::Expired))
            .sum()
    }

    /// Transactions for a block template, by ancestor-package fee rate
    /// (a transaction together with its unchosen ancestors, ancestors
    /// first), within `max_bytes`; with their total fee. A max-heap holds
    /// each transaction's package rate; choosing a package makes its
    /// descendants' entries stale, and they are recomputed when popped.
    pub fn select_for_block(
        &mut self,
        chain: &dyn TipState,
        max_bytes: usize,
    ) -> (Vec<Transaction>, Amount) {
        use std::collections::BinaryHeap;
        self.step_to_tip(chain);
        let mut in_block: HashSet<Txid> = HashSet::new();
        let mut version: HashMap<Txid, u32> = HashMap::new();
        let package_of = |txid: &Txid, in_block: &HashSet<Txid>| {
            let entry = &self.entries[txid];
            let mut package: Vec<Txid> = self
                .ancestors(&entry.parents)
                .into_iter()
                .filter(|a| !in_block.contains(a))
                .collect();
            package.push(*txid);
            let size: usize = package.iter().map(|id| self.entries[id].size).sum();
            let fee: u64 = package.iter().map(|id| self.entries[id].fee.units()).sum();
            (
                fee.saturating_mul(1000) / size.max(1) as u64,
                package,
                size,
                fee,
            )
        };
        let mut heap: BinaryHeap<(u64, std::cmp::Reverse<Txid>, u32)> = self
            .entries
            .keys()
            .map(|id| (package_of(id, &in_block).0, std::cmp::Reverse(*id), 0))
            .collect();
        let mut chosen: Vec<Txid> = Vec::new();
        let mut bytes = 0usize;
        let mut fees = 0u64;
        let mut misses = 0usize;
        while let Some((_, std::cmp::Reverse(txid), v)) = heap.pop() {
            if in_block.contains(&txid) || version.get(&txid).copied().unwrap_or(0) != v {
                continue;
            }
            let (_, mut package, size, fee) = package_of(&txid, &in_block);
            if bytes + size > max_bytes {
                misses += 1;
                if misses > TEMPLATE_MAX_CONSECUTIVE_MISSES
                    && bytes + TEMPLATE_FULL_ENOUGH_BYTES > max_bytes
                {
                    break;
                }
                continue;
            }
            misses = 0;
            package.sort_by_key(|id| self.ancestors(&self.entries[id].parents).len());
            for id in &package {
                in_block.insert(*id);
                chosen.push(*id);
            }
            bytes += size;
            fees += fee;
            for id in &package {
                for descendant in self.with_descendants(id) {
                    if in_block.contains(&descendant) {
                        continue;
                    }
                    let next = version.get(&descendant).copied().unwrap_or(0) + 1;
                    version.insert(descendant, next);
                    heap.push((
                        package_of(&descendant, &in_block).0,
                        std::cmp::Reverse(descendant),
                        next,
                    ));
                }
            }
        }
        let txs = chosen
            .iter()
            .map(|id| (*self.entries[id].tx).clone())
            .collect();
        (txs, Amount::from_units(fees))
    }

    /// The owner of pool transactions whose script hash is `hash`.
    pub fn owner_of_script_hash(&self, hash: &[u8; 32]) -> Option<PubKeyHash> {
        self.by_script_hash.get(hash).copied()
    }

    /// Pending totals of `owner`: what pool transactions pay to and spend
    /// from it. Kept as entries come and go: costs one lookup.
    pub fn address_stats(&self, owner: &PubKeyHash) -> PendingStats {
        self.by_owner
            .get(owner)
            .map(|pool| pool.stats)
            .unwrap_or_default()
    }

    /// How many pool transactions pay to or spend from `owner`.
    pub fn address_entry_count(&self, owner: &PubKeyHash) -> usize {
        match self.by_owner.get(owner).map(|pool| &pool.keys) {
            None => 0,
            Some(OwnerKeys::One(_)) => 1,
            Some(OwnerKeys::Many(keys)) => keys.len(),
        }
    }

    /// Pool transactions that pay to or spend from `owner`, oldest first
    /// (by first seen, then txid), those strictly before `before` if given.
    /// Reversed, newest first; either way a page costs its own length.
    pub fn address_entries(
        &self,
        owner: &PubKeyHash,
        before: Option<(u32, Txid)>,
    ) -> impl DoubleEndedIterator<Item = &MempoolEntry> + '_ {
        let upper = match before {
            Some(key) => Bound::Excluded(key),
            None => Bound::Unbounded,
        };
        self.by_owner
            .get(owner)
            .into_iter()
            .flat_map(move |pool| pool.keys.below(upper))
            .filter_map(|(_, txid)| self.entries.get(txid))
    }

    /// Space left for transactions in a block beside the header and coinbase.
    pub fn block_space() -> usize {
        MAX_BLOCK_SIZE - 1_000
    }

    /// Adds `tx` with `fee` and no validation, links or owner index: a
    /// corrupted pool, for tests of what guards templates against one.
    #[cfg(test)]
    pub(crate) fn insert_unchecked(&mut self, tx: Transaction, fee: Amount) -> Txid {
        let txid = tx.txid();
        let size = tx.encoded_len();
        for input in &tx.inputs {
            self.spends.insert(input.prevout(), txid);
        }
        self.by_rate.insert((fee_rate(fee, size), txid));
        self.bytes += size;
        let usage = entry_usage(&tx, 0);
        self.usage += usage;
        self.changes += 1;
        self.entries.insert(
            txid,
            MempoolEntry {
                tx: Arc::new(tx),
                txid,
                fee,
                size,
                usage,
                time: unix_now(),
                spent: Vec::new(),
                parents: HashSet::new(),
                children: HashSet::new(),
            },
        );
        txid
    }
}

/// `items` reordered so that each transaction comes after every other item
/// whose outputs it spends, and otherwise keeps its place: a pool can only
/// accept a child after its parent. (Kahn's algorithm, taking the earliest
/// ready item first.)
pub(crate) fn parents_first<T>(items: Vec<T>, tx_of: impl Fn(&T) -> &Transaction) -> Vec<T> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut position: HashMap<Txid, usize> = HashMap::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        position.entry(tx_of(item).txid()).or_insert(index);
    }
    let mut waiting_on = vec![0usize; items.len()];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); items.len()];
    for (index, item) in items.iter().enumerate() {
        let parents: HashSet<usize> = tx_of(item)
            .inputs
            .iter()
            .filter_map(|input| position.get(&input.prevout().txid).copied())
            .filter(|parent| *parent != index)
            .collect();
        waiting_on[index] = parents.len();
        for parent in parents {
            children[parent].push(index);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..items.len())
        .filter(|index| waiting_on[*index] == 0)
        .map(Reverse)
        .collect();
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    let mut ordered = Vec::with_capacity(slots.len());
    while let Some(Reverse(index)) = ready.pop() {
        ordered.extend(slots[index].take());
        for child in &children[index] {
            waiting_on[*child] -= 1;
            if waiting_on[*child] == 0 {
                ready.push(Reverse(*child));
            }
        }
    }
    // A txid commits to its inputs, so spends cannot form a cycle; were one
    // given, its members would still be returned (and refused by the pool).
    ordered.extend(slots.into_iter().flatten());
    ordered
}
