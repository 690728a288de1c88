//! The live event stream: what happens to the chain and the mempool, pushed
//! to subscribers (the REST API serves it as Server-Sent Events on
//! `GET /events`).
//!
//! One hub task ([`EventHub`]) reads the chain's events and the mempool's,
//! and fans out a small message per change to every subscriber. Each
//! subscriber follows the chain itself from its own position (the last
//! block it was told about): on every "the chain moved" message it takes a
//! [`ChainView`] and turns the blocks between its position and the view's
//! tip into events ([`catch_up`]). Replaying from a height after a
//! reconnect is the same code run from an older position, so a resumed
//! stream has no gap and no duplicate by construction, and a hub that
//! lagged behind the chain's channel loses nothing: the next view has
//! every block. Nothing here waits for the chain task.
//!
//! Ids: every chain event carries `HEIGHT:BLOCK_HASH:SEQ` ([`EventId`]):
//! the block it belongs to and its place among that block's events (`0`
//! the block, `1..` the watched addresses' activity in address order), or
//! `end` (a reorganisation, at its fork point: everything up to that block
//! was seen). Mempool events are live only and carry no id, so a browser's
//! `EventSource` keeps the last chain id for its `Last-Event-ID`.

mod hub;
mod steps;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use crate::chain::{ChainError, ChainView};
use crate::consensus::address::{Address, PubKeyHash};
use crate::consensus::hash::BlockHash;
use crate::consensus::params::Network;
use crate::mempool::{PoolEvent, RemovalReason};
pub use hub::{EventHub, HubMessage, HUB_CHANNEL_CAPACITY, MAX_SUBSCRIBERS};
pub use steps::BlockStep;

/// Most addresses one subscription may watch: each costs a lookup per
/// block and per mempool change, and its events fill the subscriber's
/// queue; a wallet with more opens several subscriptions.
pub const MAX_WATCHED_ADDRESSES: usize = 100;
/// Events waiting for one subscriber's connection. Each event is at most a
/// few KiB (`MAX_TXIDS_PER_EVENT` bounds the largest), so this bounds what
/// a subscriber that does not read costs the node to about a MiB.
pub const MAX_QUEUED_EVENTS: usize = 256;
/// How long a subscriber's queue may stay full before it is cut off: long
/// enough for a reader on a slow link to drain a burst (a reorganisation,
/// a catch-up), short enough that a reader that stopped does not hold its
/// slot and its memory for long.
pub const SLOW_SUBSCRIBER_GRACE: Duration = Duration::from_secs(5);
/// Most blocks a resume may replay (`Last-Event-ID` or `from_height`
/// further back is a 400): each block is read from the store with its undo
/// data when a watched address has history in it (an index read
/// otherwise), so this bounds the work one request can cause; the replay
/// runs in passes of `MAX_BLOCKS_PER_PASS`, which bound its memory. A client further behind
/// reads history from the REST routes and subscribes from the tip.
pub const MAX_CATCH_UP_BLOCKS: u32 = 2_000;
/// Most blocks one catch-up pass turns into events: a replay of up to
/// `MAX_CATCH_UP_BLOCKS` runs in passes of this many, each sent before the
/// next is read, so a subscriber's events in memory are one pass's (at
/// most 10 blocks x 101 events) plus its queue, whatever the replay's
/// length.
pub const MAX_BLOCKS_PER_PASS: u32 = 10;
/// Most txids listed in one address event (the count is always given): a
/// block can pay one address thousands of times.
pub const MAX_TXIDS_PER_EVENT: usize = 25;

/// `seq` of a reorganisation's id: everything up to the block was seen.
pub const SEQ_END: u32 = u32::MAX;

/// Position in the stream: a block of the chain and how many of its events
/// were delivered. Encoded as `HEIGHT:HASH:SEQ` (`SEQ` a number or `end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventId {
    pub height: u32,
    pub hash: BlockHash,
    pub seq: u32,
}

impl EventId {
    /// The position after every event of the block.
    pub fn end_of(height: u32, hash: BlockHash) -> EventId {
        EventId {
            height,
            hash,
            seq: SEQ_END,
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.seq == SEQ_END {
            write!(f, "{}:{}:end", self.height, self.hash)
        } else {
            write!(f, "{}:{}:{}", self.height, self.hash, self.seq)
        }
    }
}

/// Why an event id does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event id {0:?} is not HEIGHT:BLOCK_HASH:SEQ (SEQ a number or \"end\")")]
pub struct BadEventId(pub String);

impl FromStr for EventId {
    type Err = BadEventId;

    fn from_str(s: &str) -> Result<EventId, BadEventId> {
        let bad = || BadEventId(s.chars().take(200).collect());
        let mut parts = s.trim().split(':');
        let (Some(height), Some(hash), Some(seq), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let height = height.parse().map_err(|_| bad())?;
        let hash = hash.parse().map_err(|_| bad())?;
        let seq = match seq {
            "end" => SEQ_END,
            n => match n.parse() {
                Ok(SEQ_END) | Err(_) => return Err(bad()),
                Ok(n) => n,
            },
        };
        Ok(EventId { height, hash, seq })
    }
}

/// One event for one subscriber: its SSE name, id (chain events only) and
/// JSON data.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    pub name: &'static str,
    pub id: Option<EventId>,
    pub data: Value,
}

/// What one subscriber asked for.
#[derive(Debug, Clone)]
pub struct Watch {
    pub network: Network,
    /// Watched owners, in order (their events within a block come in this
    /// order, so a replay numbers them the same way).
    pub addresses: BTreeSet<PubKeyHash>,
    /// Whether to send `mempool-add` and `mempool-remove` for every pool
    /// transaction (watched addresses' pending activity is sent either way).
    pub mempool: bool,
}

impl Watch {
    fn address(&self, owner: &PubKeyHash) -> String {
        Address::new(self.network, *owner).to_string()
    }
}

/// Where a catch-up starts, resolved against a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The position's block is active: send its events after `seq`, then
    /// the blocks above it up to the tip.
    Forward { from: EventId },
    /// The position's block left the active chain: a reorganisation back
    /// to `fork_height`, then the blocks above it.
    Reorg {
        old: EventId,
        fork_height: u32,
        fork_hash: BlockHash,
    },
    /// The view has not reached the position yet (its chain is a prefix
    /// of the position's): nothing to send.
    Wait,
}

/// Why a position cannot be followed.
#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    #[error("block {0} of the event id is not known to this node")]
    UnknownBlock(BlockHash),
    #[error("the event id's block {hash} is at height {actual}, not {claimed}")]
    WrongHeight {
        hash: BlockHash,
        claimed: u32,
        actual: u32,
    },
    #[error("resuming from height {from} would replay {blocks} blocks, more than the limit of {limit}; read the history over REST and subscribe from the tip")]
    TooFarBehind { from: u32, blocks: u32, limit: u32 },
    #[error("the event id's block (height {from}) is more than {limit} blocks off this node's active chain (a deep stale branch, or headers this node has not reached); subscribe from the tip")]
    OffTheChain { from: u32, limit: u32 },
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The replay's client left (`catch_up`'s `abandoned`).
    #[error("the replay was abandoned")]
    Abandoned,
}

/// Decides where to go from `position`, given the active chain
/// (`active_at(height)`, `None` above the tip) and the block index
/// (`parent_of(hash)`: its height and parent, `None` if unknown).
pub fn plan(
    position: EventId,
    tip_height: u32,
    active_at: impl Fn(u32) -> Result<Option<BlockHash>, ChainError>,
    entry_of: impl Fn(&BlockHash) -> Result<Option<(u32, BlockHash)>, ChainError>,
) -> Result<Plan, CatchUpError> {
    let (height, _) = entry_of(&position.hash)?.ok_or(CatchUpError::UnknownBlock(position.hash))?;
    if height != position.height {
        return Err(CatchUpError::WrongHeight {
            hash: position.hash,
            claimed: position.height,
            actual: height,
        });
    }
    if active_at(position.height)? == Some(position.hash) {
        return Ok(Plan::Forward { from: position });
    }
    // Walk back to the active chain: O(depth of the stale branch) reads,
    // at most `MAX_CATCH_UP_BLOCKS` (an id naming a header far above the
    // tip, or a deep stale branch, would make every pass walk it).
    let mut hash = position.hash;
    let mut height = position.height;
    let mut steps = 0u32;
    loop {
        if active_at(height)? == Some(hash) {
            break;
        }
        if steps == MAX_CATCH_UP_BLOCKS {
            return Err(CatchUpError::OffTheChain {
                from: position.height,
                limit: MAX_CATCH_UP_BLOCKS,
            });
        }
        steps += 1;
        let (_, parent) = entry_of(&hash)?.ok_or(CatchUpError::UnknownBlock(hash))?;
        if height == 0 {
            return Err(CatchUpError::UnknownBlock(position.hash));
        }
        hash = parent;
        height -= 1;
    }
    if height == tip_height {
        return Ok(Plan::Wait);
    }
    Ok(Plan::Reorg {
        old: position,
        fork_height: height,
        fork_hash: hash,
    })
}

/// The blocks a catch-up pass from `plan` sends (heights, inclusive), at
/// most `MAX_BLOCKS_PER_PASS`; `None` if there are none.
pub fn replay_range(plan: &Plan, tip_height: u32) -> Option<(u32, u32)> {
    let first = match plan {
        Plan::Forward { from } if from.seq == SEQ_END => from.height + 1,
        Plan::Forward { from } => from.height,
        Plan::Reorg { fork_height, .. } => fork_height + 1,
        Plan::Wait => return None,
    };
    if first > tip_height {
        return None;
    }
    Some((
        first,
        tip_height.min(first.saturating_add(MAX_BLOCKS_PER_PASS - 1)),
    ))
}

/// Confirmed balances of the watched addresses, by owner.
pub type Balances = BTreeMap<PubKeyHash, i128>;

/// One catch-up pass: its events, the position after them, and the watched
/// addresses' balances there (what the next pass from that position
/// starts from).
pub struct Pass {
    pub events: Vec<StreamEvent>,
    pub position: EventId,
    pub balances: Option<Balances>,
}

/// The events from `position` toward the view's tip: one pass, of at most
/// `MAX_BLOCKS_PER_PASS` blocks (`replay_range`). `balances` are the
/// watched addresses' balances at `position` if the caller knows them (the
/// last pass's); without them, or after a reorganisation, they are worked
/// out from the view's (at its tip) less every change above the pass's
/// first block, which reads the blocks up to the tip that touch a watched
/// address once more, one at a time. Runs on a blocking thread: it reads
/// each block and its undo data.
pub fn catch_up(
    view: &ChainView,
    watch: &Watch,
    position: EventId,
    balances: Option<&Balances>,
    abandoned: &AtomicBool,
) -> Result<Pass, CatchUpError> {
    // Looked at before each block read: a replay nobody waits for any more
    // (its client gone) stops and frees what it holds.
    let go_on = || {
        if abandoned.load(Ordering::Relaxed) {
            Err(CatchUpError::Abandoned)
        } else {
            Ok(())
        }
    };
    let tip = view.tip();
    let plan = plan(
        position,
        tip.height,
        |h| view.hash_at(h),
        |hash| {
            Ok(view
                .index_entry(hash)?
                .map(|e| (e.height, e.header.prev_hash)))
        },
    )?;
    let at_tip = || -> Result<Balances, ChainError> {
        watch
            .addresses
            .iter()
            .map(|owner| Ok((*owner, view.store().address_stats(owner)?.balance() as i128)))
            .collect()
    };
    let mut events = Vec::new();
    if let Plan::Reorg {
        old,
        fork_height,
        fork_hash,
    } = plan
    {
        let balances: Vec<Value> = at_tip()?
            .iter()
            .map(|(owner, balance)| json!({ "address": watch.address(owner), "balance": *balance as u64 }))
            .collect();
        events.push(StreamEvent {
            name: "reorg",
            id: Some(EventId::end_of(fork_height, fork_hash)),
            data: json!({
                "fork_height": fork_height,
                "fork_hash": fork_hash.to_string(),
                "old_tip_height": old.height,
                "old_tip_hash": old.hash.to_string(),
                "new_tip_height": tip.height,
                "new_tip_hash": tip.hash.to_string(),
                "balances": balances,
            }),
        });
    }
    // What the position's balances are worth: a reorganisation moved them.
    let known = match plan {
        Plan::Forward { from } if from.seq == SEQ_END => balances,
        _ => None,
    };
    let Some((first, last)) = replay_range(&plan, tip.height) else {
        let (position, balances) = match plan {
            Plan::Reorg {
                fork_height,
                fork_hash,
                ..
            } => (EventId::end_of(fork_height, fork_hash), Some(at_tip()?)),
            _ => (position, balances.cloned()),
        };
        return Ok(Pass {
            events,
            position,
            balances,
        });
    };
    let touched = steps::touched_heights(view, &watch.addresses, first, last)?;
    let untouched = BTreeSet::new();
    let mut steps = Vec::with_capacity((last - first + 1) as usize);
    for height in first..=last {
        go_on()?;
        let watched = if touched.contains(&height) {
            &watch.addresses
        } else {
            &untouched
        };
        steps.push(steps::read_step(view, height, watched)?);
    }
    // The balances before the pass's first block.
    let mut running: Balances = match known {
        Some(known) => known.clone(),
        None => {
            let mut before = at_tip()?;
            let mut subtract = |step: &BlockStep| {
                for (owner, change) in &step.changes {
                    *before.get_mut(owner).expect("watched") -= change.net as i128;
                }
            };
            steps.iter().for_each(&mut subtract);
            if last < tip.height {
                for height in steps::touched_heights(view, &watch.addresses, last + 1, tip.height)?
                {
                    go_on()?;
                    subtract(&steps::read_step(view, height, &watch.addresses)?);
                }
            }
            before
        }
    };
    let skip_through = match plan {
        Plan::Forward { from } if from.seq != SEQ_END => Some(from.seq),
        _ => None,
    };
    for (i, step) in steps.iter().enumerate() {
        for (owner, change) in &step.changes {
            *running.get_mut(owner).expect("watched") += change.net as i128;
        }
        let mut step_events = step_events(step, watch, tip.height, &running);
        if i == 0 {
            if let Some(seen) = skip_through {
                step_events.retain(|e| e.id.is_some_and(|id| id.seq > seen));
            }
        }
        events.extend(step_events);
    }
    let last_step = steps.last().expect("a range is never empty");
    Ok(Pass {
        events,
        position: EventId::end_of(last_step.height, last_step.hash),
        balances: Some(running),
    })
}

/// A block's events: the block (seq 0), then each watched address it
/// touches (seq 1.., in address order).
pub fn step_events(
    step: &BlockStep,
    watch: &Watch,
    tip_height: u32,
    balances_after: &BTreeMap<PubKeyHash, i128>,
) -> Vec<StreamEvent> {
    let id = |seq| {
        Some(EventId {
            height: step.height,
            hash: step.hash,
            seq,
        })
    };
    let mut events = vec![StreamEvent {
        name: "block",
        id: id(0),
        data: json!({
            "hash": step.hash.to_string(),
            "height": step.height,
            "prev_hash": step.prev_hash.to_string(),
            "time": step.time,
            "tx_count": step.tx_count,
        }),
    }];
    for (seq, (owner, change)) in (1..).zip(&step.changes) {
        events.push(StreamEvent {
            name: "address",
            id: id(seq),
            data: json!({
                "address": watch.address(owner),
                "status": "confirmed",
                "height": step.height,
                "block_hash": step.hash.to_string(),
                "change": change.net,
                "tx_count": change.tx_count,
                "txids": change.txids.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
                "confirmations": tip_height.saturating_sub(step.height) + 1,
                "balance": balances_after.get(owner).map(|b| *b as u64),
            }),
        });
    }
    events
}

/// The events a pool change makes for one subscriber (live only, no id):
/// `mempool-add`/`mempool-remove` if it asked for them, and an `address`
/// event per watched address the transaction touches (`pending` when it
/// enters; `dropped` with the reason when it leaves other than by
/// confirmation, which the block's own address event reports).
pub fn pool_events(event: &PoolEvent, watch: &Watch) -> Vec<StreamEvent> {
    let mut events = Vec::new();
    let (txid, owners, status, reason) = match event {
        PoolEvent::Added {
            txid,
            fee,
            size,
            owners,
        } => {
            if watch.mempool {
                events.push(StreamEvent {
                    name: "mempool-add",
                    id: None,
                    data: json!({ "txid": txid.to_string(), "fee": fee, "size": size }),
                });
            }
            (txid, owners, "pending", None)
        }
        PoolEvent::Removed {
            txid,
            reason,
            owners,
        } => {
            if watch.mempool {
                events.push(StreamEvent {
                    name: "mempool-remove",
                    id: None,
                    data: json!({ "txid": txid.to_string(), "reason": reason.as_str() }),
                });
            }
            if *reason == RemovalReason::Confirmed {
                return events;
            }
            (txid, owners, "dropped", Some(reason.as_str()))
        }
    };
    for (owner, net) in owners {
        if watch.addresses.contains(owner) {
            let mut data = json!({
                "address": watch.address(owner),
                "status": status,
                "txid": txid.to_string(),
                "change": net,
                "confirmations": 0,
            });
            if let Some(reason) = reason {
                data["reason"] = json!(reason);
            }
            events.push(StreamEvent {
                name: "address",
                id: None,
                data,
            });
        }
    }
    events
}

/// A subscriber's bounded queue: events wait here for its connection. A
/// send that finds the queue full for `grace` cuts the subscriber off (its
/// stream then ends with a `close` event saying why); nothing else waits
/// for it.
pub struct Outbox {
    sender: tokio::sync::mpsc::Sender<StreamEvent>,
    grace: Duration,
}

/// Why a subscriber's stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// Its connection went away.
    Gone,
    /// It fell behind: the reason to send it.
    CutOff(String),
}

impl Outbox {
    pub fn new(
        capacity: usize,
        grace: Duration,
    ) -> (Outbox, tokio::sync::mpsc::Receiver<StreamEvent>) {
        let (sender, receiver) = tokio::sync::mpsc::channel(capacity);
        (Outbox { sender, grace }, receiver)
    }

    pub async fn send(&self, event: StreamEvent) -> Result<(), Closed> {
        match tokio::time::timeout(self.grace, self.sender.send(event)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Closed::Gone),
            Err(_) => Err(Closed::CutOff(format!(
                "slow subscriber: {} events waited for more than {} s",
                self.sender.max_capacity(),
                self.grace.as_secs_f64()
            ))),
        }
    }

    /// Resolves when the subscriber's connection is gone.
    pub async fn closed(&self) {
        self.sender.closed().await
    }
}

#[cfg(test)]
mod tests;
