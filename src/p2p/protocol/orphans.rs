//! Orphan transactions: relayed transactions that spend outputs the node
//! has not seen yet (Bitcoin Core's `TxOrphanage`). A child can arrive
//! before its parent when the two travel different paths; without a place
//! to wait it would be refused and never asked for again (its sender marks
//! it known to us). An orphan waits here, bounded in count and bytes,
//! while its missing parents are asked of its sender; when a parent enters
//! the pool, its orphans are judged again, one per turn of the protocol
//! thread.
//!
//! Kept here, an orphan sent again costs a lookup, not a judgement (a
//! 750-input transaction with one missing input used to cost 750 UTXO
//! reads each time it was sent).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::consensus::hash::Txid;
use crate::consensus::transaction::Transaction;
use crate::encoding::Encode;
use crate::mempool::MAX_STANDARD_TX_SIZE;

use super::PeerId;

/// Orphans kept at once (Bitcoin Core's `DEFAULT_MAX_ORPHAN_TRANSACTIONS`);
/// past it, orphans are evicted (`Orphanage::limit`).
pub const MAX_ORPHANS: usize = 100;
/// Encoded bytes of all orphans together; past it, orphans are evicted. The largest orphan is a standard transaction
/// (`MAX_STANDARD_TX_SIZE`, 100 KB): 50 of them fit. Decoded, a
/// transaction of that size takes about as many heap bytes as encoded
/// (its inputs and outputs are fixed-size records of about their encoded
/// length).
pub const MAX_ORPHAN_BYTES: usize = 5_000_000;
/// What each (parent, orphan) pair of the parent index is counted as
/// against `MAX_ORPHAN_BYTES`: a 100 KB orphan can name 750 parents, each
/// a map slot (a 32-byte hash and a list header, 56 bytes, up to twice
/// that in a table that just grew) and its list's first allocation (room
/// for four txids, 128 bytes, and the allocator's 16).
pub const ORPHAN_PARENT_INDEX_BYTES: usize = 256;
/// An orphan whose parents have not come by then is dropped, as in
/// Bitcoin Core (`ORPHAN_TX_EXPIRE_TIME`).
pub const ORPHAN_EXPIRY: Duration = Duration::from_secs(20 * 60);

const _: () = assert!(MAX_STANDARD_TX_SIZE <= MAX_ORPHAN_BYTES);

#[derive(Debug)]
pub(super) struct Orphan {
    pub tx: Transaction,
    /// The peer that sent it: asked for its parents, blamed if it turns out
    /// invalid. Its orphans leave with it.
    pub from: PeerId,
    size: usize,
    expires: Instant,
    /// Where its txid sits in `Orphanage::list`.
    position: usize,
    /// The parent whose output it was last found missing (its first parent
    /// until told, `set_missing`): a block that confirms it wakes the
    /// orphan (`waiting`), as a parent entering the pool does.
    missing: Txid,
    /// Woken once for `missing` already (`woken`): an orphan still missing
    /// an output of a confirmed parent (spent by then) is not judged again
    /// at every tip.
    woken_for_missing: bool,
}

/// The orphans, by txid, by the parents they wait for, and in a list for
/// picking one to evict.
#[derive(Debug, Default)]
pub(super) struct Orphanage {
    entries: HashMap<Txid, Orphan>,
    /// Parent txid to the orphans that spend one of its outputs.
    by_parent: HashMap<Txid, Vec<Txid>>,
    list: Vec<Txid>,
    bytes: usize,
}

/// What adding an orphan did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Added {
    /// Kept; the txids it spends from (its parents), each once.
    Kept(Vec<Txid>),
    /// Already kept (from this sender or another).
    Known,
    /// Kept, then evicted at once to hold the bounds (its sender's
    /// orphans took the most bytes).
    Evicted,
    /// Larger than a standard transaction: a pool would refuse it anyway.
    TooLarge,
}

impl Orphanage {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn contains(&self, txid: &Txid) -> bool {
        self.entries.contains_key(txid)
    }

    /// Keeps `tx` from `from` until `now + ORPHAN_EXPIRY`, then evicts
    /// orphans (possibly this one, `limit`) until both bounds hold.
    pub fn add(&mut self, txid: Txid, tx: Transaction, from: PeerId, now: Instant) -> Added {
        if self.entries.contains_key(&txid) {
            return Added::Known;
        }
        let encoded = tx.encoded_len();
        if encoded > MAX_STANDARD_TX_SIZE {
            return Added::TooLarge;
        }
        let parents = parents_of(&tx);
        let missing = parents.first().copied().unwrap_or(txid);
        let size = encoded + parents.len() * ORPHAN_PARENT_INDEX_BYTES;
        for parent in &parents {
            self.by_parent.entry(*parent).or_default().push(txid);
        }
        self.bytes += size;
        self.list.push(txid);
        self.entries.insert(
            txid,
            Orphan {
                tx,
                from,
                size,
                expires: now + ORPHAN_EXPIRY,
                position: self.list.len() - 1,
                missing,
                woken_for_missing: false,
            },
        );
        self.limit(&mut rand::thread_rng());
        if self.entries.contains_key(&txid) {
            Added::Kept(parents)
        } else {
            Added::Evicted
        }
    }

    /// Records that `txid` was found missing an output of `parent`.
    pub fn set_missing(&mut self, txid: &Txid, parent: Txid) {
        if let Some(orphan) = self.entries.get_mut(txid) {
            if orphan.missing != parent {
                orphan.missing = parent;
                orphan.woken_for_missing = false;
            }
        }
    }

    /// Each orphan not yet woken for the parent it was last found missing,
    /// with that parent.
    pub fn waiting(&self) -> impl Iterator<Item = (Txid, Txid)> + '_ {
        self.entries
            .iter()
            .filter(|(_, o)| !o.woken_for_missing)
            .map(|(txid, o)| (*txid, o.missing))
    }

    /// Records that `txid` was woken for its missing parent.
    pub fn woken(&mut self, txid: &Txid) {
        if let Some(orphan) = self.entries.get_mut(txid) {
            orphan.woken_for_missing = true;
        }
    }

    /// The orphan kept under `txid`.
    pub fn get(&self, txid: &Txid) -> Option<&Orphan> {
        self.entries.get(txid)
    }

    /// The txids of all orphans kept.
    pub fn txids(&self) -> &[Txid] {
        &self.list
    }

    /// The orphans that spend an output of `parent`.
    pub fn children_of(&self, parent: &Txid) -> Vec<Txid> {
        self.by_parent.get(parent).cloned().unwrap_or_default()
    }

    /// Takes an orphan out (to judge it again, or because it expired or its
    /// sender left).
    pub fn take(&mut self, txid: &Txid) -> Option<Orphan> {
        let orphan = self.entries.remove(txid)?;
        for parent in parents_of(&orphan.tx) {
            if let Some(children) = self.by_parent.get_mut(&parent) {
                children.retain(|c| c != txid);
                if children.is_empty() {
                    self.by_parent.remove(&parent);
                }
            }
        }
        let last = self.list.len() - 1;
        self.list.swap_remove(orphan.position);
        if orphan.position != last {
            let moved = self.list[orphan.position];
            self.entries
                .get_mut(&moved)
                .expect("listed orphans are kept")
                .position = orphan.position;
        }
        self.bytes -= orphan.size;
        Some(orphan)
    }

    /// Drops the orphans `peer` sent (it left): nobody is left to ask for
    /// their parents or to blame for them.
    pub fn erase_for_peer(&mut self, peer: PeerId) -> usize {
        let gone: Vec<Txid> = self
            .entries
            .iter()
            .filter(|(_, o)| o.from == peer)
            .map(|(txid, _)| *txid)
            .collect();
        for txid in &gone {
            self.take(txid);
        }
        gone.len()
    }

    /// Drops the orphans whose time is up.
    pub fn expire(&mut self, now: Instant) -> usize {
        let gone: Vec<Txid> = self
            .entries
            .iter()
            .filter(|(_, o)| o.expires <= now)
            .map(|(txid, _)| *txid)
            .collect();
        for txid in &gone {
            self.take(txid);
        }
        gone.len()
    }

    /// Evicts orphans until at most `MAX_ORPHANS` and `MAX_ORPHAN_BYTES`
    /// (counting the parent index) are kept: each time a random one of the
    /// peer whose orphans take the most bytes (as Bitcoin Core since v28
    /// evicts from the peer using the most), so a peer flooding orphans
    /// evicts its own, not an honest peer's. A walk of at most
    /// `MAX_ORPHANS` + 1 entries per eviction.
    fn limit(&mut self, rng: &mut impl Rng) {
        while self.list.len() > MAX_ORPHANS || self.bytes > MAX_ORPHAN_BYTES {
            let mut by_peer: HashMap<PeerId, usize> = HashMap::new();
            for orphan in self.entries.values() {
                *by_peer.entry(orphan.from).or_default() += orphan.size;
            }
            // Ties go to the lowest peer id, so eviction does not depend on
            // the map's order.
            let Some((heaviest, _)) = by_peer
                .into_iter()
                .max_by_key(|(peer, bytes)| (*bytes, std::cmp::Reverse(*peer)))
            else {
                break;
            };
            let theirs: Vec<Txid> = self
                .list
                .iter()
                .filter(|txid| self.entries[*txid].from == heaviest)
                .copied()
                .collect();
            let victim = theirs[rng.gen_range(0..theirs.len())];
            self.take(&victim);
        }
    }
}

/// The txids whose outputs `tx` spends, each once, in input order.
fn parents_of(tx: &Transaction) -> Vec<Txid> {
    let mut seen = HashSet::new();
    tx.inputs
        .iter()
        .map(|input| input.prevout().txid)
        .filter(|txid| seen.insert(*txid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::amount::Amount;
    use crate::consensus::hash::{sha256d, Hash256};
    use crate::consensus::limits::OUTPUT_LEN;
    use crate::consensus::transaction::{OutPoint, TxIn, TxOut, TX_VERSION};

    fn orphan(n: u32, parents: &[Txid], outputs: usize) -> Transaction {
        Transaction {
            version: TX_VERSION,
            inputs: parents
                .iter()
                .map(|p| TxIn::Spend {
                    prevout: OutPoint::new(*p, n),
                    pubkey: [2; 33],
                    signature: [0; 64],
                })
                .collect(),
            outputs: vec![
                TxOut {
                    amount: Amount::from_units(1_000 + u64::from(n)),
                    owner: Default::default(),
                };
                outputs
            ],
            lock_time: 0,
        }
    }

    fn parent(n: u32) -> Txid {
        Hash256(sha256d(&n.to_le_bytes()).0)
    }

    #[test]
    fn an_orphan_is_found_by_its_parents_and_leaves_every_index_when_taken() {
        let mut orphans = Orphanage::default();
        let now = Instant::now();
        let tx = orphan(1, &[parent(1), parent(2), parent(1)], 1);
        let txid = tx.txid();
        assert_eq!(
            orphans.add(txid, tx.clone(), 7, now),
            Added::Kept(vec![parent(1), parent(2)])
        );
        assert_eq!(orphans.add(txid, tx.clone(), 8, now), Added::Known);
        assert_eq!(orphans.children_of(&parent(2)), vec![txid]);
        assert_eq!(
            orphans.bytes(),
            tx.encoded_len() + 2 * ORPHAN_PARENT_INDEX_BYTES
        );
        let taken = orphans.take(&txid).unwrap();
        assert_eq!((taken.tx, taken.from), (tx, 7));
        assert!(orphans.children_of(&parent(1)).is_empty());
        assert!(orphans.by_parent.is_empty() && orphans.list.is_empty());
        assert_eq!(orphans.bytes(), 0);
    }

    #[test]
    fn orphans_past_either_bound_are_evicted_and_the_indexes_stay_whole() {
        let mut orphans = Orphanage::default();
        let now = Instant::now();
        for n in 0..(MAX_ORPHANS as u32 + 30) {
            let tx = orphan(n, &[parent(n % 7)], 1);
            orphans.add(tx.txid(), tx, 1, now);
        }
        assert_eq!(orphans.len(), MAX_ORPHANS);
        check_indexes(&orphans);
        // Large ones: the byte bound holds first.
        let mut orphans = Orphanage::default();
        let big = (MAX_STANDARD_TX_SIZE - 200) / OUTPUT_LEN;
        for n in 0..60 {
            let tx = orphan(n, &[parent(n)], big);
            assert!(tx.encoded_len() <= MAX_STANDARD_TX_SIZE);
            orphans.add(tx.txid(), tx, 1, now);
        }
        assert!(orphans.bytes() <= MAX_ORPHAN_BYTES);
        assert!(orphans.len() < 60);
        check_indexes(&orphans);
        let too_large = orphan(0, &[parent(0)], MAX_STANDARD_TX_SIZE / OUTPUT_LEN + 1);
        assert_eq!(
            orphans.add(too_large.txid(), too_large, 1, now),
            Added::TooLarge
        );
    }

    /// A peer flooding orphans evicts its own: another peer's few stay.
    #[test]
    fn a_flooding_peers_orphans_are_evicted_before_anyone_elses() {
        let mut orphans = Orphanage::default();
        let now = Instant::now();
        for n in 0..10 {
            let tx = orphan(n, &[parent(n)], 1);
            orphans.add(tx.txid(), tx, 2, now);
        }
        for n in 10..(MAX_ORPHANS as u32 + 50) {
            let tx = orphan(n, &[parent(n)], 1);
            orphans.add(tx.txid(), tx, 1, now);
        }
        assert_eq!(orphans.len(), MAX_ORPHANS);
        let honest = orphans.entries.values().filter(|o| o.from == 2).count();
        assert_eq!(honest, 10);
        // Bytes decide, not counts: one peer's few large orphans go before
        // another's many small ones.
        let mut orphans = Orphanage::default();
        for n in 0..40 {
            let tx = orphan(n, &[parent(n)], 1);
            orphans.add(tx.txid(), tx, 2, now);
        }
        let big = (MAX_STANDARD_TX_SIZE - 200) / OUTPUT_LEN;
        for n in 40..100 {
            let tx = orphan(n, &[parent(n)], big);
            orphans.add(tx.txid(), tx, 1, now);
        }
        assert!(orphans.bytes() <= MAX_ORPHAN_BYTES);
        assert_eq!(orphans.entries.values().filter(|o| o.from == 2).count(), 40);
        check_indexes(&orphans);
    }

    #[test]
    fn a_departed_senders_and_expired_orphans_are_dropped() {
        let mut orphans = Orphanage::default();
        let now = Instant::now();
        for n in 0..10 {
            let tx = orphan(n, &[parent(n)], 1);
            orphans.add(
                tx.txid(),
                tx,
                u64::from(n % 2),
                now + Duration::from_secs(n.into()),
            );
        }
        assert_eq!(orphans.erase_for_peer(1), 5);
        check_indexes(&orphans);
        // Added at 0, 2, 4, 6, 8 s: those of 0 and 2 s are due at 3 s past expiry.
        assert_eq!(
            orphans.expire(now + ORPHAN_EXPIRY + Duration::from_secs(3)),
            2
        );
        assert_eq!(orphans.len(), 3);
        check_indexes(&orphans);
    }

    /// Every kept orphan is listed at its position and indexed under each
    /// parent, nothing else is, and the byte count adds up.
    fn check_indexes(orphans: &Orphanage) {
        assert_eq!(orphans.list.len(), orphans.entries.len());
        for (i, txid) in orphans.list.iter().enumerate() {
            assert_eq!(orphans.entries[txid].position, i);
        }
        let mut indexed = 0;
        for (parent, children) in &orphans.by_parent {
            for child in children {
                assert!(parents_of(&orphans.entries[child].tx).contains(parent));
                indexed += 1;
            }
        }
        let expected: usize = orphans
            .entries
            .values()
            .map(|o| parents_of(&o.tx).len())
            .sum();
        assert_eq!(indexed, expected);
        let bytes: usize = orphans
            .entries
            .values()
            .map(|o| o.tx.encoded_len() + parents_of(&o.tx).len() * ORPHAN_PARENT_INDEX_BYTES)
            .sum();
        assert_eq!(
            orphans.entries.values().map(|o| o.size).sum::<usize>(),
            bytes
        );
        assert_eq!(orphans.bytes(), bytes);
    }
}
