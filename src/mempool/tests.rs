//! Mempool rules against a real chain in a temp dir.

use std::sync::Arc;

use super::*;
use crate::chain::BlockOutcome;
use crate::consensus::hash::sha256d;
use crate::consensus::keys::PrivateKey;
use crate::consensus::params::Network;
use crate::consensus::transaction::TxIn;
use crate::consensus::validation::{check_block, check_block_contextual};
use crate::mining::{assemble_block, solve_block, BlockTemplateHeader};
use crate::testkit::{key, signed_spend, TestChain};

struct Fixture {
    chain: Chain,
    test: TestChain,
    _dir: tempfile::TempDir,
}

/// A chain with 14 blocks mined to key(1): coinbases of heights 1..=5 are
/// mature for the next block.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut chain = crate::testkit::regtest_chain(dir.path());
    let mut test = TestChain::new(Network::Regtest);
    for _ in 0..14 {
        let block = test.mine_empty(key(1).pubkey_hash()).clone();
        chain.process_block(Arc::new(block), None).unwrap();
    }
    Fixture {
        chain,
        test,
        _dir: dir,
    }
}

fn pay(to: &PrivateKey, units: u64) -> TxOut {
    TxOut {
        amount: Amount::from_units(units),
        owner: to.pubkey_hash(),
    }
}

/// Spends mature coinbase number `n` (0-based) of key(1): `units` to key(2),
/// the rest minus `fee` back to key(1).
fn spend_coinbase(f: &Fixture, n: usize, units: u64, fee: u64) -> Transaction {
    let (outpoint, utxo) = f.test.spendable(key(1).pubkey_hash())[n];
    let change = utxo.output.amount.units() - units - fee;
    signed_spend(
        &[(outpoint, utxo.output, &key(1))],
        vec![pay(&key(2), units), pay(&key(1), change)],
    )
}

fn mine(f: &mut Fixture, txs: Vec<Transaction>) -> Block {
    let block = f.test.build_block(key(9).pubkey_hash(), txs);
    f.test.apply(block.clone());
    f.chain
        .process_block(Arc::new(block.clone()), None)
        .unwrap();
    block
}

#[test]
fn every_rejection_reason() {
    let mut f = fixture();
    let mut pool = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    let good = spend_coinbase(&f, 0, 1_000_000, 10_000);
    let txid = pool.accept(&f.chain, good.clone()).unwrap();
    assert_eq!(
        pool.accept(&f.chain, good.clone()),
        Err(MempoolError::AlreadyInPool(txid))
    );

    // Double spend of the same coin: first seen wins.
    let rival = spend_coinbase(&f, 0, 2_000_000, 10_000);
    assert_eq!(
        pool.accept(&f.chain, rival).unwrap_err().code(),
        "mempool-conflict"
    );

    let coinbase = Transaction::coinbase(99, 0, vec![pay(&key(1), 1)]);
    assert_eq!(pool.accept(&f.chain, coinbase), Err(MempoolError::Coinbase));

    let mut no_outputs = spend_coinbase(&f, 1, 1, 1);
    no_outputs.outputs.clear();
    assert_eq!(
        pool.accept(&f.chain, no_outputs),
        Err(MempoolError::Invalid(TxError::NoOutputs))
    );

    let missing = OutPoint::new(sha256d(b"nowhere"), 0);
    let orphan = signed_spend(
        &[(missing, pay(&key(1), 5_000), &key(1))],
        vec![pay(&key(2), 1_000)],
    );
    assert_eq!(
        pool.accept(&f.chain, orphan),
        Err(MempoolError::MissingInput(missing))
    );

    let cheap = spend_coinbase(&f, 1, 1_000_000, 10);
    assert!(matches!(
        pool.accept(&f.chain, cheap),
        Err(MempoolError::FeeTooLow { .. })
    ));

    let mut forged = spend_coinbase(&f, 1, 1_000_000, 10_000);
    forged.outputs[0].owner = key(7).pubkey_hash();
    assert!(matches!(
        pool.accept(&f.chain, forged),
        Err(MempoolError::Invalid(TxError::BadSignature { .. }))
    ));

    let thief = {
        let (outpoint, utxo) = f.test.spendable(key(1).pubkey_hash())[2];
        signed_spend(
            &[(outpoint, utxo.output, &key(7))],
            vec![pay(&key(7), 1_000)],
        )
    };
    assert!(matches!(
        pool.accept(&f.chain, thief),
        Err(MempoolError::Invalid(TxError::WrongOwner { .. }))
    ));

    let overspend = spend_coinbase(&f, 3, 49 * 100_000_000, 0);
    let mut overspend = overspend;
    overspend.outputs[1].amount = Amount::from_units(2 * 100_000_000);
    let (outpoint, utxo) = f.test.spendable(key(1).pubkey_hash())[3];
    overspend.sign_inputs(&[utxo.output], &[&key(1)]);
    let _ = outpoint;
    assert!(matches!(
        pool.accept(&f.chain, overspend),
        Err(MempoolError::Invalid(TxError::InputsBelowOutputs { .. }))
    ));

    // The newest coinbase (height 14) is immature at height 15.
    let young = {
        let cb = &f.test.tip().transactions[0];
        signed_spend(
            &[(OutPoint::new(cb.txid(), 0), cb.outputs[0], &key(1))],
            vec![pay(&key(2), 1_000_000)],
        )
    };
    assert!(matches!(
        pool.accept(&f.chain, young),
        Err(MempoolError::Invalid(TxError::ImmatureCoinbase { .. }))
    ));

    let mut locked = spend_coinbase(&f, 4, 1_000_000, 10_000);
    locked.lock_time = 100;
    let (_, utxo) = f.test.spendable(key(1).pubkey_hash())[4];
    locked.sign_inputs(&[utxo.output], &[&key(1)]);
    assert_eq!(pool.accept(&f.chain, locked), Err(MempoolError::NotFinal));

    let huge = {
        let (outpoint, utxo) = f.test.spendable(key(1).pubkey_hash())[4];
        signed_spend(
            &[(outpoint, utxo.output, &key(1))],
            vec![pay(&key(2), 1); MAX_STANDARD_TX_SIZE / 28 + 1],
        )
    };
    assert!(matches!(
        pool.accept(&f.chain, huge),
        Err(MempoolError::TooLarge { .. })
    ));

    // Confirmed transactions are refused.
    mine(&mut f, vec![good.clone()]);
    assert_eq!(
        pool.accept(&f.chain, good),
        Err(MempoolError::AlreadyConfirmed(txid))
    );
}

/// A chain of `n` unconfirmed transactions, each spending the previous one's
/// change, each paying `fee`.
fn unconfirmed_chain(f: &Fixture, n: usize, fee: u64) -> Vec<Transaction> {
    let first = spend_coinbase(f, 0, 1_000_000, fee);
    let mut txs = vec![first];
    for _ in 1..n {
        let prev = txs.last().unwrap();
        let change = prev.outputs[1];
        txs.push(signed_spend(
            &[(OutPoint::new(prev.txid(), 1), change, &key(1))],
            vec![
                pay(&key(2), 1_000_000),
                pay(&key(1), change.amount.units() - 1_000_000 - fee),
            ],
        ));
    }
    txs
}

#[test]
fn chain_of_three_is_accepted_in_order_and_evicted_together() {
    let f = fixture();
    let mut pool = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    let chain = unconfirmed_chain(&f, 3, 5_000);
    // Out of order, the child's input is missing.
    assert!(matches!(
        pool.accept(&f.chain, chain[1].clone()),
        Err(MempoolError::MissingInput(_))
    ));
    for tx in &chain {
        pool.accept(&f.chain, tx.clone()).unwrap();
    }
    assert_eq!(pool.len(), 3);
    assert_eq!(
        pool.remove_with_descendants(&chain[0].txid(), RemovalReason::Invalid),
        3
    );
    assert!(pool.is_empty());
    assert_eq!(pool.bytes(), 0);
    assert!(pool.spender_of(&chain[0].inputs[0].prevout()).is_none());
}

#[test]
fn full_pool_evicts_the_lowest_fee_rate_with_descendants() {
    let f = fixture();
    let mut low_chain = unconfirmed_chain(&f, 2, 1_000);
    // The child pays twice its parent's fee, so the parent is the lowest
    // rate whatever the txids, and the child goes only because its parent does.
    low_chain[1].outputs[1].amount =
        Amount::from_units(low_chain[1].outputs[1].amount.units() - 1_000);
    let parent_change = low_chain[0].outputs[1];
    low_chain[1].sign_inputs(&[parent_change], &[&key(1)]);
    let mid = spend_coinbase(&f, 1, 1_000_000, 20_000);
    let high = spend_coinbase(&f, 2, 1_000_000, 50_000);
    // Room for three of these transactions (the limit counts their memory),
    // not four.
    let limit = entry_usage(&low_chain[0], 0)
        + entry_usage(&low_chain[1], 1)
        + entry_usage(&mid, 0)
        + 2 * OWNER_SLOT_USAGE
        + 10;
    assert!(entry_usage(&high, 0) > 10);
    let mut pool = Mempool::new(&f.chain, limit);
    for tx in &low_chain {
        pool.accept(&f.chain, tx.clone()).unwrap();
    }
    pool.accept(&f.chain, mid.clone()).unwrap();
    // Adding `high` overflows: the lowest rate (low_chain[0]) goes, and its
    // child with it.
    pool.accept(&f.chain, high.clone()).unwrap();
    assert!(!pool.contains(&low_chain[0].txid()));
    assert!(!pool.contains(&low_chain[1].txid()));
    assert!(pool.contains(&mid.txid()) && pool.contains(&high.txid()));
    assert!(pool.usage() <= limit);
    assert_eq!(
        pool.usage(),
        entry_usage(&mid, 0) + entry_usage(&high, 0) + 2 * OWNER_SLOT_USAGE
    );
    // Something paying less than what is left cannot get in.
    let poor = spend_coinbase(&f, 3, 1_000_000, 1_000);
    pool.accept(&f.chain, spend_coinbase(&f, 4, 1_000_000, 30_000))
        .unwrap();
    assert!(matches!(
        pool.accept(&f.chain, poor),
        Err(MempoolError::Full { .. })
    ));
}

/// A copy of `tx` whose first signature no longer verifies.
fn with_broken_signature(mut tx: Transaction) -> Transaction {
    match &mut tx.inputs[0] {
        TxIn::Spend { signature, .. } => signature[10] ^= 1,
        TxIn::Coinbase { .. } => panic!("a spend"),
    }
    tx
}

#[test]
fn a_full_pool_refuses_what_it_would_evict_before_checking_signatures() {
    let f = fixture();
    let low = spend_coinbase(&f, 0, 1_000_000, 20_000);
    // Room for one such transaction and its two owners (key(1), key(2)).
    let mut pool = Mempool::new(&f.chain, entry_usage(&low, 0) + 2 * OWNER_SLOT_USAGE + 10);
    pool.accept(&f.chain, low.clone()).unwrap();
    // Paying the same rate as the lowest entry, or less: refused as `Full`
    // whatever its signatures, which are never looked at (a broken one
    // would be `Invalid`).
    for fee in [20_000, 5_000] {
        let poor = with_broken_signature(spend_coinbase(&f, 1, 1_000_000, fee));
        assert!(
            matches!(pool.accept(&f.chain, poor), Err(MempoolError::Full { .. })),
            "fee {fee}"
        );
    }
    // A child of the lowest entry would go with it.
    let change = low.outputs[1];
    let child = with_broken_signature(signed_spend(
        &[(OutPoint::new(low.txid(), 1), change, &key(1))],
        vec![pay(&key(1), change.amount.units() - 90_000)],
    ));
    assert!(matches!(
        pool.accept(&f.chain, child),
        Err(MempoolError::Full { .. })
    ));
    // Paying more than the entry it evicts: its signatures are checked.
    let rich = spend_coinbase(&f, 2, 1_000_000, 90_000);
    assert_eq!(
        pool.accept(&f.chain, with_broken_signature(rich.clone()))
            .unwrap_err()
            .code(),
        "invalid"
    );
    assert!(pool.contains(&low.txid()));
    pool.accept(&f.chain, rich.clone()).unwrap();
    assert!(pool.contains(&rich.txid()) && !pool.contains(&low.txid()));
}

/// An eviction gives an address's slot back only if the newcomer does not
/// pay that address too: a newcomer that fits only if it did is refused
/// before its signatures are checked.
#[test]
fn a_full_pool_counts_the_address_slots_a_newcomer_keeps() {
    let f = fixture();
    let shared = crate::testkit::payee(77);
    let pays = |n: usize, outputs: usize, fee: u64| {
        let (outpoint, utxo) = f.test.spendable(key(1).pubkey_hash())[n];
        let mut paid: Vec<TxOut> = (0..outputs)
            .map(|_| TxOut {
                amount: Amount::from_units(1_000_000),
                owner: shared,
            })
            .collect();
        paid.push(pay(
            &key(1),
            utxo.output.amount.units() - outputs as u64 * 1_000_000 - fee,
        ));
        signed_spend(&[(outpoint, utxo.output, &key(1))], paid)
    };
    let low = pays(0, 1, 20_000);
    let limit = entry_usage(&low, 0) + 2 * OWNER_SLOT_USAGE + 10;
    let mut pool = Mempool::new(&f.chain, limit);
    pool.accept(&f.chain, low.clone()).unwrap();
    // Pays more, to the same two addresses, and takes more than `low`
    // alone frees: it would be evicted at once.
    let bigger = pays(1, 5, 900_000);
    assert!(entry_usage(&bigger, 0) > entry_usage(&low, 0) + 10);
    assert!(entry_usage(&bigger, 0) <= entry_usage(&low, 0) + 2 * OWNER_SLOT_USAGE);
    assert!(matches!(
        pool.accept(&f.chain, with_broken_signature(bigger)),
        Err(MempoolError::Full { .. })
    ));
    assert!(pool.contains(&low.txid()));
}

/// The pool's judgement in steps (checks, signatures without the lock,
/// insertion) comes to what `accept` comes to, and the insertion judges
/// the pool as it is by then.
#[test]
fn a_transaction_judged_with_its_signatures_outside_the_lock_is_judged_the_same() {
    let f = fixture();
    let pool = std::sync::Mutex::new(Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES));
    let good = spend_coinbase(&f, 0, 1_000_000, 10_000);
    let broken = with_broken_signature(spend_coinbase(&f, 1, 1_000_000, 10_000));
    assert_eq!(
        accept_unlocked(&pool, &f.chain, broken.clone())
            .unwrap_err()
            .code(),
        "invalid"
    );
    assert_eq!(
        accept_unlocked(&pool, &f.chain, good.clone()),
        Ok(good.txid())
    );
    assert_eq!(
        accept_unlocked(&pool, &f.chain, good.clone()),
        Err(MempoolError::AlreadyInPool(good.txid()))
    );
    let mut pool = pool.into_inner().unwrap();
    assert_eq!(pool.txids(), vec![good.txid()]);

    // Outputs other than those the signatures were checked for: checked
    // again, so a broken signature is still found.
    let spent = pool.prepare(&f.chain, &broken).unwrap();
    let mut other = spent.clone();
    other[0].amount = Amount::from_units(other[0].amount.units() + 1);
    assert_eq!(
        pool.accept_verified(&f.chain, broken.clone(), &other)
            .unwrap_err()
            .code(),
        "invalid"
    );
    // A rival that entered between the two steps wins.
    let first = spend_coinbase(&f, 2, 1_000_000, 10_000);
    let rival = spend_coinbase(&f, 2, 2_000_000, 10_000);
    let spent = pool.prepare(&f.chain, &first).unwrap();
    pool.accept(&f.chain, rival.clone()).unwrap();
    assert_eq!(
        pool.accept_verified(&f.chain, first, &spent)
            .unwrap_err()
            .code(),
        "mempool-conflict"
    );
    assert!(pool.contains(&rival.txid()));
}

/// A transaction paying fresh addresses costs the pool a slot per
/// address: counted in its usage (so the memory limit holds), and given
/// back when the last entry of the address leaves.
#[test]
fn the_owners_a_transaction_brings_are_counted_in_the_pool_s_usage() {
    let mut f = fixture();
    let mut pool = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    let (outpoint, utxo) = f.test.spendable(key(1).pubkey_hash())[0];
    let fresh = 50;
    let mut outputs: Vec<TxOut> = (0..fresh)
        .map(|n| TxOut {
            amount: Amount::from_units(1_000_000),
            owner: crate::testkit::payee(1_000 + n),
        })
        .collect();
    outputs.push(pay(
        &key(1),
        utxo.output.amount.units() - fresh * 1_000_000 - 100_000,
    ));
    let tx = signed_spend(&[(outpoint, utxo.output, &key(1))], outputs);
    pool.accept(&f.chain, tx.clone()).unwrap();
    // The fresh addresses and key(1), which it pays and spends from.
    assert_eq!(
        pool.usage(),
        entry_usage(&tx, 0) + (fresh as usize + 1) * OWNER_SLOT_USAGE
    );
    assert_consistent(&pool, &f.chain);
    mine(&mut f, vec![tx]);
    pool.catch_up(&f.chain);
    assert!(pool.is_empty());
    assert_eq!(pool.usage(), 0);
}

#[test]
fn block_removes_confirmed_and_conflicting_transactions() {
    let mut f = fixture();
    let mut pool = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    let chain = unconfirmed_chain(&f, 2, 5_000);
    let other = spend_coinbase(&f, 1, 1_000_000, 5_000);
    for tx in chain.iter().chain([&other]) {
        pool.accept(&f.chain, tx.clone()).unwrap();
    }
    // A block confirms `other` and a rival of chain[0] (same coin).
    let rival = spend_coinbase(&f, 0, 3_000_000, 7_000);
    mine(&mut f, vec![other.clone(), rival]);
    pool.catch_up(&f.chain);
    assert!(
        pool.is_empty(),
        "confirmed and conflicting (with descendants) are gone"
    );
}

#[test]
fn reorg_returns_transactions_to_the_pool() {
    let mut f = fixture();
    let mut pool = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    let fork = f.test.clone();
    let txs = unconfirmed_chain(&f, 2, 5_000);
    mine(&mut f, txs.clone());
    pool.catch_up(&f.chain);
    assert!(pool.is_empty());
    // A longer empty branch from before that block wins.
    let mut branch = fork;
    for _ in 0..2 {
        let block = branch.mine_empty(key(8).pubkey_hash()).clone();
        f.chain.process_block(Arc::new(block), None).unwrap();
    }
    assert_eq!(f.chain.tip().hash, branch.tip().hash());
    pool.catch_up(&f.chain);
    assert_eq!(pool.txids().len(), 2);
    for tx in &txs {
        assert!(pool.contains(&tx.txid()));
    }
}

#[test]
fn template_takes_packages_by_fee_rate_with_ancestors_first() {
    let f = fixture();
    let mut pool = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    // Parent pays little, child pays a lot: the package beats `mid`.
    let parent = spend_coinbase(&f, 0, 1_000_000, 1_000);
    let change = parent.outputs[1];
    let child = signed_spend(
        &[(OutPoint::new(parent.txid(), 1), change, &key(1))],
        vec![pay(&key(2), change.amount.units() - 200_000)],
    );
    let mid = spend_coinbase(&f, 1, 1_000_000, 20_000);
    for tx in [&parent, &child, &mid] {
        pool.accept(&f.chain, tx.clone()).unwrap();
    }
    let (txs, fees) = pool.select_for_block(&f.chain, Mempool::block_space());
    let order: Vec<Txid> = txs.iter().map(Transaction::txid).collect();
    assert_eq!(order, vec![parent.txid(), child.txid(), mid.txid()]);
    assert_eq!(fees.units(), 1_000 + 200_000 + 20_000);
    // A tight size limit takes only what fits.
    let (some, _) = pool.select_for_block(&f.chain, mid.encoded_len());
    assert_eq!(some, vec![mid]);
    let _ = TxIn::Coinbase {
        height: 0,
        extra_nonce: 0,
    };
}

#[test]
fn pool_survives_a_restart_through_its_file() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut pool = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    for tx in unconfirmed_chain(&f, 3, 5_000) {
        pool.accept(&f.chain, tx).unwrap();
    }
    assert_eq!(persist::save(&pool, dir.path()).unwrap(), 3);
    let mut again = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    assert_eq!(persist::load(&mut again, &f.chain, dir.path()), (3, 3));
    assert_eq!(again.txids(), pool.txids());
    // A damaged file is ignored, not fatal.
    std::fs::write(dir.path().join(persist::MEMPOOL_FILE), b"\x01\xff").unwrap();
    let mut empty = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    assert_eq!(persist::load(&mut empty, &f.chain, dir.path()), (0, 0));
}

/// A `mempool.dat` of `entries`, as `persist::save` writes one.
fn mempool_file(entries: &[(u32, &Transaction)]) -> Vec<u8> {
    let mut out = vec![1u8];
    crate::encoding::write_compact_size(&mut out, entries.len() as u64);
    for (time, tx) in entries {
        out.extend_from_slice(&time.to_le_bytes());
        tx.encode_to(&mut out);
    }
    out
}

#[test]
fn a_mempool_file_is_read_within_bounds() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(persist::MEMPOOL_FILE);
    let tx = spend_coinbase(&f, 0, 1_000_000, 5_000);
    // An entry dated in the future (which would never expire) enters at
    // the clock's time.
    std::fs::write(&path, mempool_file(&[(u32::MAX, &tx)])).unwrap();
    let mut pool = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    assert_eq!(persist::load(&mut pool, &f.chain, dir.path()), (1, 1));
    assert!(pool.get(&tx.txid()).unwrap().time <= crate::chain::unix_now());
    // A well-formed file far larger than the pool's limit is not read: the
    // same file loads into a pool large enough.
    let copies = (2 << 20) / tx.encoded_len();
    std::fs::write(&path, mempool_file(&vec![(1, &tx); copies])).unwrap();
    let mut small = Mempool::new(&f.chain, 4_096);
    assert_eq!(persist::load(&mut small, &f.chain, dir.path()), (0, 0));
    let mut large = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    assert_eq!(persist::load(&mut large, &f.chain, dir.path()), (1, copies));
}

#[test]
fn pending_address_stats_count_both_sides() {
    let f = fixture();
    let mut pool = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    let tx = spend_coinbase(&f, 0, 1_000_000, 5_000);
    pool.accept(&f.chain, tx).unwrap();
    let to = pool.address_stats(&key(2).pubkey_hash());
    assert_eq!(
        (to.funded_txo_count, to.funded_txo_sum, to.tx_count),
        (1, 1_000_000, 1)
    );
    let from = pool.address_stats(&key(1).pubkey_hash());
    assert_eq!(
        (from.spent_txo_count, from.spent_txo_sum),
        (1, 50 * 100_000_000)
    );
    // The same transaction is listed for payer and payee, for nobody else.
    let txid = pool.txids()[0];
    for owner in [key(1), key(2)] {
        let listed: Vec<_> = pool
            .address_entries(&owner.pubkey_hash(), None)
            .map(|e| e.txid)
            .collect();
        assert_eq!(listed, vec![txid]);
    }
    assert_eq!(pool.address_entries(&key(9).pubkey_hash(), None).count(), 0);
    let entry = pool.get(&txid).unwrap();
    let at = (entry.time, txid);
    assert_eq!(
        pool.address_entries(&key(1).pubkey_hash(), Some(at))
            .count(),
        0
    );
    // Leaving the pool leaves the owner index too.
    assert_eq!(
        pool.remove_with_descendants(&txid, RemovalReason::Invalid),
        1
    );
    assert!(pool.by_owner.is_empty());
    assert_eq!(
        pool.address_stats(&key(2).pubkey_hash()),
        Default::default()
    );
}

#[test]
fn an_owners_entries_page_in_first_seen_order_and_its_totals_follow_removals() {
    let f = fixture();
    let mut pool = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    let payee = key(2).pubkey_hash();
    let txids: Vec<Txid> = (0..3)
        .map(|n| {
            pool.accept(&f.chain, spend_coinbase(&f, n, 1_000 + n as u64, 5_000))
                .unwrap()
        })
        .collect();
    let mut keys: Vec<(u32, Txid)> = txids
        .iter()
        .map(|t| (pool.get(t).unwrap().time, *t))
        .collect();
    keys.sort();
    let listed = |pool: &Mempool, before| -> Vec<(u32, Txid)> {
        pool.address_entries(&payee, before)
            .map(|e| (e.time, e.txid))
            .collect()
    };
    assert_eq!(listed(&pool, None), keys);
    assert_eq!(listed(&pool, Some(keys[2])), keys[..2]);
    let newest: Vec<Txid> = pool
        .address_entries(&payee, None)
        .rev()
        .take(2)
        .map(|e| e.txid)
        .collect();
    assert_eq!(newest, vec![keys[2].1, keys[1].1]);
    let stats = pool.address_stats(&payee);
    assert_eq!(
        (stats.funded_txo_count, stats.funded_txo_sum, stats.tx_count),
        (3, 3_003, 3)
    );
    assert_eq!(pool.address_entry_count(&payee), 3);
    pool.remove_with_descendants(&keys[1].1, RemovalReason::Invalid);
    let paid_by_the_rest: u128 = [keys[0].1, keys[2].1]
        .iter()
        .map(|t| u128::from(pool.get(t).unwrap().tx.outputs[0].amount.units()))
        .sum();
    let stats = pool.address_stats(&payee);
    assert_eq!(
        (stats.funded_txo_count, stats.funded_txo_sum, stats.tx_count),
        (2, paid_by_the_rest, 2)
    );
    assert_eq!(listed(&pool, None), vec![keys[0], keys[2]]);
    assert_eq!(pool.address_entry_count(&payee), 2);
    assert_consistent(&pool, &f.chain);
    // Down to one entry (held inline), then none: the owner leaves the index.
    pool.remove_with_descendants(&keys[0].1, RemovalReason::Invalid);
    assert_eq!(listed(&pool, None), vec![keys[2]]);
    assert_eq!(listed(&pool, Some(keys[2])), vec![]);
    assert_eq!(pool.address_entry_count(&payee), 1);
    assert_eq!(pool.address_stats(&payee).tx_count, 1);
    assert_consistent(&pool, &f.chain);
    pool.remove_with_descendants(&keys[2].1, RemovalReason::Invalid);
    assert_eq!(pool.address_entry_count(&payee), 0);
    assert_eq!(pool.address_stats(&payee), PendingStats::default());
    assert!(pool.by_owner.is_empty());
}

#[test]
fn the_best_paying_txids_come_parents_first() {
    let f = fixture();
    let mut pool = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    // A parent paying a low fee, its child paying a high one (the child
    // pays for its parent), and an unrelated transaction between them.
    let parent = spend_coinbase(&f, 0, 1_000_000, 5_000);
    let child = signed_spend(
        &[(OutPoint::new(parent.txid(), 0), parent.outputs[0], &key(2))],
        vec![pay(&key(3), 800_000)],
    );
    let other = spend_coinbase(&f, 1, 1_000_000, 50_000);
    for tx in [&parent, &child, &other] {
        pool.accept(&f.chain, tx.clone()).unwrap();
    }
    let rate = |txid: &Txid| pool.get(txid).unwrap().fee_rate();
    assert!(rate(&child.txid()) > rate(&other.txid()));
    assert!(rate(&other.txid()) > rate(&parent.txid()));
    // Best first, except that the child waits for its parent.
    assert_eq!(
        pool.best_txids(10),
        vec![other.txid(), parent.txid(), child.txid()]
    );
    // The two best: the parent is not among them, so nothing reorders.
    assert_eq!(pool.best_txids(2), vec![child.txid(), other.txid()]);
}

/// Every index of the pool agrees with its entries, every link with the
/// entries' inputs, and every input spends a pool output or an unspent
/// output at the chain's tip.
fn assert_consistent(pool: &Mempool, chain: &Chain) {
    let mut spends = HashMap::new();
    let mut by_owner: HashMap<PubKeyHash, OwnerPool> = HashMap::new();
    let mut bytes = 0;
    let mut usage = 0;
    for (txid, entry) in &pool.entries {
        assert_eq!(*txid, entry.tx.txid());
        bytes += entry.size;
        usage += entry.usage;
        let mut parents = HashSet::new();
        for input in &entry.tx.inputs {
            let outpoint = input.prevout();
            spends.insert(outpoint, *txid);
            if let Some(parent) = pool.entries.get(&outpoint.txid) {
                parents.insert(parent.txid);
                assert!(
                    parent.children.contains(txid),
                    "{txid} not a child of {}",
                    parent.txid
                );
            } else {
                assert!(
                    chain.store().utxo(&outpoint).unwrap().is_some(),
                    "{txid} spends {outpoint}, which does not exist"
                );
            }
        }
        assert_eq!(entry.parents, parents, "parents of {txid}");
        for child in &entry.children {
            assert!(pool.entries[child].parents.contains(txid));
        }
        // Each owner's entries and totals, counted afresh.
        for owner in owners(&entry.tx.outputs, &entry.spent) {
            let key = (entry.time, *txid);
            let expected = by_owner.entry(owner).or_insert_with(|| OwnerPool::new(key));
            expected.keys.insert(key);
            expected.stats.tx_count += 1;
            for output in entry.tx.outputs.iter().filter(|o| o.owner == owner) {
                expected.stats.funded_txo_count += 1;
                expected.stats.funded_txo_sum += u128::from(output.amount.units());
            }
            for spent in entry.spent.iter().filter(|o| o.owner == owner) {
                expected.stats.spent_txo_count += 1;
                expected.stats.spent_txo_sum += u128::from(spent.amount.units());
            }
        }
    }
    assert_eq!(pool.spends, spends);
    assert_eq!(
        pool.usage,
        usage + by_owner.len() * OWNER_SLOT_USAGE,
        "the usage counted is the entries' sum and their owners' slots"
    );
    assert_eq!(pool.by_owner, by_owner);
    let by_script_hash: HashMap<[u8; 32], PubKeyHash> = by_owner
        .keys()
        .map(|owner| (crate::store::schema::script_hash(owner), *owner))
        .collect();
    assert_eq!(pool.by_script_hash, by_script_hash);
    assert_eq!(pool.bytes, bytes);
    let by_rate: BTreeSet<(u64, Txid)> = pool
        .entries
        .values()
        .map(|e| (e.fee_rate(), e.txid))
        .collect();
    assert_eq!(pool.by_rate, by_rate);
}

/// Builds a template on the chain's tip from the pool's selection (as the
/// producer and the REST API do, without any repair), runs the chain's
/// validation on it (context-free with proof of work once solved, then
/// contextual against the UTXO set with signatures), and connects it
/// through the chain. Returns the txids it carried, in block order.
fn assert_template_valid(f: &mut Fixture, pool: &mut Mempool) -> Vec<Txid> {
    let (txs, fees) = pool.select_for_block(&f.chain, Mempool::block_space());
    let tip = f.chain.tip();
    let ctx = f.chain.context_after(&tip.hash).unwrap();
    let mut block = assemble_block(
        f.chain.params(),
        BlockTemplateHeader {
            prev_hash: tip.hash,
            height: ctx.height,
            time: ctx.median_time_past + 1,
            bits: ctx.expected_bits,
        },
        key(9).pubkey_hash(),
        0,
        fees,
        txs,
    );
    solve_block(&mut block);
    check_block(&block, f.chain.params()).unwrap();
    if let Err(error) = check_block_contextual(
        &block,
        &ctx,
        f.chain.params(),
        f.chain.store(),
        SignatureChecks::On,
    ) {
        panic!("the template is invalid: {error}");
    }
    let carried = block.txids()[1..].to_vec();
    let outcome = f.chain.process_block(Arc::new(block), None).unwrap();
    assert!(
        matches!(outcome, BlockOutcome::Accepted { .. }),
        "{outcome:?}"
    );
    carried
}

/// Spends output 1 (key(1)'s change) of `parent`: 1 000 000 units to
/// key(2), the rest minus `fee` back to key(1).
fn child_of(parent: &Transaction, fee: u64) -> Transaction {
    let change = parent.outputs[1];
    signed_spend(
        &[(OutPoint::new(parent.txid(), 1), change, &key(1))],
        vec![
            pay(&key(2), 1_000_000),
            pay(&key(1), change.amount.units() - 1_000_000 - fee),
        ],
    )
}

/// Feeds `branch`'s blocks above `from_height` to the chain, which must
/// end on its tip.
fn switch_to(f: &mut Fixture, branch: &TestChain, from_height: u32) {
    for block in &branch.blocks[from_height as usize + 1..] {
        f.chain
            .process_block(Arc::new(block.clone()), None)
            .unwrap();
    }
    assert_eq!(
        f.chain.tip().hash,
        branch.tip().hash(),
        "the branch is active"
    );
}

#[test]
fn reorg_drops_the_descendants_of_a_parent_double_spent_on_the_new_branch() {
    let mut f = fixture();
    let mut pool = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    let fork = f.test.clone();
    let parent = spend_coinbase(&f, 0, 1_000_000, 5_000);
    let rival = spend_coinbase(&f, 0, 3_000_000, 7_000);
    let unrelated = spend_coinbase(&f, 1, 1_000_000, 5_000);
    mine(&mut f, vec![parent.clone()]);
    // The confirmed parent's children wait in the pool.
    let child = child_of(&parent, 10_000);
    let grandchild = child_of(&child, 10_000);
    for tx in [&child, &grandchild, &unrelated] {
        pool.accept(&f.chain, tx.clone()).unwrap();
    }
    // A longer branch confirms a rival spend of the parent's coin.
    let mut branch = fork;
    let block = branch.build_block(key(8).pubkey_hash(), vec![rival.clone()]);
    branch.apply(block);
    branch.mine_empty(key(8).pubkey_hash());
    let fork_height = f.test.height() - 1;
    switch_to(&mut f, &branch, fork_height);
    pool.catch_up(&f.chain);
    for gone in [&parent, &child, &grandchild] {
        assert!(
            !pool.contains(&gone.txid()),
            "{} is still in the pool",
            gone.txid()
        );
    }
    assert_eq!(pool.txids(), vec![unrelated.txid()]);
    assert_consistent(&pool, &f.chain);
    assert_eq!(
        assert_template_valid(&mut f, &mut pool),
        vec![unrelated.txid()]
    );
}

#[test]
fn reorg_returns_a_parent_ahead_of_its_high_fee_child_in_templates() {
    let mut f = fixture();
    let mut pool = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    let fork = f.test.clone();
    let parent = spend_coinbase(&f, 0, 1_000_000, 1_000);
    mine(&mut f, vec![parent.clone()]);
    // The child pays far more per byte than its parent.
    let child = child_of(&parent, 200_000);
    pool.accept(&f.chain, child.clone()).unwrap();
    // A longer branch without the parent: it comes back from its block.
    let mut branch = fork;
    branch.mine_empty(key(8).pubkey_hash());
    branch.mine_empty(key(8).pubkey_hash());
    let fork_height = f.test.height() - 1;
    switch_to(&mut f, &branch, fork_height);
    pool.catch_up(&f.chain);
    assert_eq!(pool.len(), 2);
    assert_eq!(
        pool.get(&child.txid()).unwrap().parents,
        HashSet::from([parent.txid()])
    );
    assert_consistent(&pool, &f.chain);
    assert_eq!(
        assert_template_valid(&mut f, &mut pool),
        vec![parent.txid(), child.txid()]
    );
}

#[test]
fn reorg_drops_spends_of_a_vanished_coinbase() {
    let mut f = fixture();
    let mut pool = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    // key(1)'s coinbase of height 5, mature at the next height (15).
    let (outpoint, utxo) = f.test.spendable(key(1).pubkey_hash())[4];
    assert_eq!(utxo.height, 5);
    let spend = signed_spend(
        &[(outpoint, utxo.output, &key(1))],
        vec![pay(&key(2), utxo.output.amount.units() - 10_000)],
    );
    let unrelated = spend_coinbase(&f, 0, 1_000_000, 5_000);
    pool.accept(&f.chain, spend.clone()).unwrap();
    pool.accept(&f.chain, unrelated.clone()).unwrap();
    // A longer branch forks below height 5: that coinbase never existed.
    let mut branch = TestChain::new(Network::Regtest);
    for _ in 0..4 {
        branch.mine_empty(key(1).pubkey_hash());
    }
    for _ in 0..11 {
        branch.mine_empty(key(8).pubkey_hash());
    }
    switch_to(&mut f, &branch, 4);
    pool.catch_up(&f.chain);
    assert_eq!(pool.txids(), vec![unrelated.txid()]);
    assert_consistent(&pool, &f.chain);
    assert_eq!(
        assert_template_valid(&mut f, &mut pool),
        vec![unrelated.txid()]
    );
}

#[test]
fn ancestor_limit_counts_unconfirmed_ancestors_not_the_transaction_itself() {
    let f = fixture();
    let mut pool = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    let chain = unconfirmed_chain(&f, MAX_ANCESTORS + 2, 1_000);
    // The last of these has MAX_ANCESTORS unconfirmed ancestors.
    for tx in &chain[..=MAX_ANCESTORS] {
        pool.accept(&f.chain, tx.clone()).unwrap();
    }
    assert_eq!(
        pool.accept(&f.chain, chain[MAX_ANCESTORS + 1].clone()),
        Err(MempoolError::TooManyAncestors {
            count: MAX_ANCESTORS + 1,
            limit: MAX_ANCESTORS
        })
    );
    assert_eq!(pool.len(), MAX_ANCESTORS + 1);
    assert_consistent(&pool, &f.chain);
}

#[test]
fn descendant_limit_counts_unconfirmed_descendants_not_the_transaction_itself() {
    let f = fixture();
    let mut pool = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    let (outpoint, utxo) = f.test.spendable(key(1).pubkey_hash())[0];
    let fan_out = signed_spend(
        &[(outpoint, utxo.output, &key(1))],
        vec![pay(&key(1), 1_000_000); MAX_DESCENDANTS + 1],
    );
    pool.accept(&f.chain, fan_out.clone()).unwrap();
    let children: Vec<Transaction> = (0..=MAX_DESCENDANTS)
        .map(|vout| {
            signed_spend(
                &[(
                    OutPoint::new(fan_out.txid(), vout as u32),
                    fan_out.outputs[vout],
                    &key(1),
                )],
                vec![pay(&key(2), 990_000)],
            )
        })
        .collect();
    for child in &children[..MAX_DESCENDANTS] {
        pool.accept(&f.chain, child.clone()).unwrap();
    }
    let refused = pool.accept(&f.chain, children[MAX_DESCENDANTS].clone());
    assert_eq!(
        refused,
        Err(MempoolError::TooManyDescendants {
            ancestor: fan_out.txid(),
            limit: MAX_DESCENDANTS
        })
    );
    assert_eq!(refused.unwrap_err().code(), "too-long-mempool-chain");
    assert_eq!(pool.len(), MAX_DESCENDANTS + 1);
    assert_consistent(&pool, &f.chain);
}

#[test]
fn outputs_below_the_dust_limit_are_refused() {
    let f = fixture();
    let mut pool = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    let (outpoint, utxo) = f.test.spendable(key(1).pubkey_hash())[0];
    let paying = |units: u64| {
        signed_spend(
            &[(outpoint, utxo.output, &key(1))],
            vec![
                pay(&key(1), utxo.output.amount.units() - units - 10_000),
                pay(&key(2), units),
            ],
        )
    };
    for units in [0, 1, DUST_LIMIT - 1] {
        let refused = pool.accept(&f.chain, paying(units));
        assert_eq!(
            refused,
            Err(MempoolError::Dust {
                index: 1,
                amount: units,
                limit: DUST_LIMIT
            })
        );
        assert_eq!(refused.unwrap_err().code(), "dust");
    }
    pool.accept(&f.chain, paying(DUST_LIMIT)).unwrap();
    // The spec states the same figures as the code.
    let spec = include_str!("../../protocol-spec/README.md");
    for stated in [
        format!("{DUST_LIMIT} base units"),
        format!("at most {MAX_ANCESTORS} unconfirmed ancestors"),
        format!("at most {MAX_DESCENDANTS} unconfirmed descendants"),
    ] {
        assert!(spec.contains(&stated), "the spec does not say {stated:?}");
    }
}

/// A parent and a child that the pool holds with the same entry time, the
/// child's txid ordering before the parent's (so saving by time then txid
/// alone would write the child first).
fn same_time_pair(f: &Fixture) -> (Transaction, Transaction) {
    let parent = spend_coinbase(f, 0, 1_000_000, 5_000);
    (1..)
        .map(|fee| child_of(&parent, 5_000 + fee))
        .find(|child| child.txid() < parent.txid())
        .map(|child| (parent.clone(), child))
        .unwrap()
}

#[test]
fn a_child_with_its_parents_time_survives_a_restart() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut pool = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    let (parent, child) = same_time_pair(&f);
    for tx in [&parent, &child] {
        pool.accept_inner(&f.chain, tx.clone(), 1_700_000_000, SignatureChecks::On)
            .unwrap();
    }
    assert_eq!(persist::save(&pool, dir.path()).unwrap(), 2);
    let file = std::fs::read(dir.path().join(persist::MEMPOOL_FILE)).unwrap();
    let saved: Vec<Txid> = persist::read(&file)
        .unwrap()
        .iter()
        .map(|(_, tx)| tx.txid())
        .collect();
    assert_eq!(
        saved,
        vec![parent.txid(), child.txid()],
        "parent saved first"
    );
    let mut again = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    assert_eq!(persist::load(&mut again, &f.chain, dir.path()), (2, 2));
    assert_eq!(again.txids(), pool.txids());
    assert_consistent(&again, &f.chain);

    // A file that lists the child first (as older versions wrote it) loads
    // whole too.
    let mut file = vec![1u8, 2];
    for tx in [&child, &parent] {
        file.extend_from_slice(&1_700_000_000u32.to_le_bytes());
        tx.encode_to(&mut file);
    }
    std::fs::write(dir.path().join(persist::MEMPOOL_FILE), file).unwrap();
    let mut reordered = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    assert_eq!(persist::load(&mut reordered, &f.chain, dir.path()), (2, 2));
    assert_consistent(&reordered, &f.chain);
}

#[test]
fn revalidation_keeps_children_and_the_owner_index_in_step() {
    let mut f = fixture();
    let mut pool = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    let (parent, child) = same_time_pair(&f);
    for tx in [&parent, &child] {
        pool.accept_inner(&f.chain, tx.clone(), 1_700_000_000, SignatureChecks::On)
            .unwrap();
    }
    // key(3) is paid by a transaction that a block then double-spends,
    // while the pool misses the block's event.
    let (outpoint, utxo) = f.test.spendable(key(1).pubkey_hash())[1];
    let doomed = signed_spend(
        &[(outpoint, utxo.output, &key(1))],
        vec![
            pay(&key(3), 1_000_000),
            pay(&key(1), utxo.output.amount.units() - 1_010_000),
        ],
    );
    let rival = signed_spend(
        &[(outpoint, utxo.output, &key(1))],
        vec![pay(&key(4), utxo.output.amount.units() - 10_000)],
    );
    pool.accept(&f.chain, doomed.clone()).unwrap();
    assert_eq!(pool.address_stats(&key(3).pubkey_hash()).tx_count, 1);
    mine(&mut f, vec![rival]);
    while pool.events.try_recv().is_ok() {}
    assert_eq!(pool.revalidate(&f.chain), 1);
    assert_consistent(&pool, &f.chain);
    assert_eq!(pool.txids().len(), 2);
    assert!(pool.contains(&parent.txid()) && pool.contains(&child.txid()));
    assert_eq!(
        pool.address_stats(&key(3).pubkey_hash()),
        PendingStats::default()
    );
    assert_eq!(pool.address_entries(&key(3).pubkey_hash(), None).count(), 0);
    let key2: Vec<Txid> = pool
        .address_entries(&key(2).pubkey_hash(), None)
        .map(|e| e.txid)
        .collect();
    assert_eq!(key2.len(), 2);
    assert_eq!(
        pool.address_stats(&key(2).pubkey_hash()).funded_txo_count,
        2
    );
    assert_consistent(&pool, &f.chain);
}

#[test]
fn parents_first_orders_spends_and_keeps_the_rest_in_place() {
    let f = fixture();
    let chain = unconfirmed_chain(&f, 3, 5_000);
    let other = spend_coinbase(&f, 1, 1_000_000, 5_000);
    let given = vec![
        chain[2].clone(),
        other.clone(),
        chain[1].clone(),
        chain[0].clone(),
    ];
    let ordered: Vec<Txid> = parents_first(given, |tx| tx)
        .iter()
        .map(Transaction::txid)
        .collect();
    assert_eq!(
        ordered,
        vec![
            other.txid(),
            chain[0].txid(),
            chain[1].txid(),
            chain[2].txid()
        ]
    );
}

/// A chain whose last block holds `count` independent spends of a fan-out
/// transaction's outputs, switched to a longer branch without that block:
/// the fixture, the spends (returning to the pool) and two pools that saw
/// the reorganisation, not yet caught up.
fn reorg_returning(count: usize) -> (Fixture, Vec<Transaction>, Mempool, Mempool) {
    let mut f = fixture();
    let (outpoint, utxo) = f.test.spendable(key(1).pubkey_hash())[0];
    let mut outputs = vec![pay(&key(1), 10_000); count];
    outputs.push(pay(
        &key(1),
        utxo.output.amount.units() - 10_000 * count as u64 - 100_000,
    ));
    let fan_out = signed_spend(&[(outpoint, utxo.output, &key(1))], outputs);
    mine(&mut f, vec![fan_out.clone()]);
    let fork = f.test.clone();
    let fork_height = f.test.height();
    let spends: Vec<Transaction> = (0..count)
        .map(|i| {
            signed_spend(
                &[(
                    OutPoint::new(fan_out.txid(), i as u32),
                    fan_out.outputs[i],
                    &key(1),
                )],
                vec![pay(&key(2), 9_000)],
            )
        })
        .collect();
    mine(&mut f, spends.clone());
    let pool = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    let other = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    let mut branch = fork;
    branch.mine_empty(key(8).pubkey_hash());
    branch.mine_empty(key(8).pubkey_hash());
    switch_to(&mut f, &branch, fork_height);
    (f, spends, pool, other)
}

/// A transaction from outside while a rebuild is under way is judged
/// against the whole pool: a double spend of a queued transaction is a
/// conflict (first seen stays first), a child of one finds its parent, and
/// a save keeps what is still queued.
#[test]
fn a_rebuild_under_way_keeps_first_seen_parents_and_the_saved_file() {
    let (f, spends, mut pool, _) = reorg_returning(300);
    assert!(!pool.catch_up_step(&f.chain));
    let last = spends.last().unwrap();
    assert!(!pool.contains(&last.txid()), "still queued");
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        super::persist::save(&pool, dir.path()).unwrap(),
        300,
        "the file keeps the queued transactions"
    );
    let TxIn::Spend { prevout, .. } = last.inputs[0] else {
        panic!("a spend")
    };
    let double = signed_spend(
        &[(
            prevout,
            TxOut {
                amount: Amount::from_units(10_000),
                owner: key(1).pubkey_hash(),
            },
            &key(1),
        )],
        vec![pay(&key(3), 8_000)],
    );
    assert!(matches!(
        pool.accept(&f.chain, double),
        Err(MempoolError::Conflict { .. })
    ));
    let parent = &spends[RETURNING_CHILD_PARENT];
    let child = signed_spend(
        &[(OutPoint::new(parent.txid(), 0), parent.outputs[0], &key(2))],
        vec![pay(&key(4), 8_000)],
    );
    pool.accept(&f.chain, child.clone()).unwrap();
    assert!(!pool.rebuild_pending());
    assert_eq!(pool.len(), 301);
    assert_consistent(&pool, &f.chain);
}

/// A returning transaction near the end of the queue.
const RETURNING_CHILD_PARENT: usize = 290;

/// After a reorganisation returns 300 transactions, `catch_up_step` judges
/// at most `REBUILD_STEP_CANDIDATES` of them per call (the pool answers
/// from what is back so far) and ends where a whole `catch_up` does.
#[test]
fn a_rebuild_runs_a_bounded_step_at_a_time() {
    const RETURNING: usize = 300;
    let (f, _, mut stepped, mut whole) = reorg_returning(RETURNING);
    let mut steps = 0;
    while !stepped.catch_up_step(&f.chain) {
        steps += 1;
        assert!(stepped.len() <= steps * REBUILD_STEP_CANDIDATES);
        assert!(stepped.rebuild_pending());
        assert_consistent(&stepped, &f.chain);
    }
    assert_eq!(steps + 1, RETURNING.div_ceil(REBUILD_STEP_CANDIDATES));
    assert!(!stepped.rebuild_pending());
    assert!(whole.catch_up(&f.chain));
    let mut a = stepped.txids();
    let mut b = whole.txids();
    a.sort();
    b.sort();
    assert_eq!(a.len(), RETURNING);
    assert_eq!(a, b);
    assert_consistent(&stepped, &f.chain);
}

/// While a long rebuild has more than `REBUILD_LEFT_FOR_A_NEWCOMER`
/// candidates queued, a newcomer cannot be judged (it would make its
/// thread judge the whole rest at once); once the rebuild's own steps
/// bring the queue down, it is judged against the whole pool.
#[test]
fn a_newcomer_waits_for_a_long_rebuild_instead_of_finishing_it() {
    const RETURNING: usize = 3 * REBUILD_LEFT_FOR_A_NEWCOMER;
    let (f, _, mut pool, _) = reorg_returning(RETURNING);
    assert!(!pool.catch_up_step(&f.chain));
    let newcomer = spend_coinbase(&f, 1, 1_000_000, 10_000);
    assert_eq!(
        pool.accept(&f.chain, newcomer.clone()),
        Err(MempoolError::TipMoved)
    );
    assert!(pool.try_prepare(&f.chain, &newcomer).is_none());
    assert!(pool.rebuild_pending(), "the newcomer did not finish it");
    assert!(pool.len() < RETURNING);
    while pool.queued().count() > REBUILD_LEFT_FOR_A_NEWCOMER {
        assert!(!pool.catch_up_step(&f.chain));
    }
    assert_eq!(pool.accept(&f.chain, newcomer.clone()), Ok(newcomer.txid()));
    assert!(!pool.rebuild_pending());
    assert_eq!(pool.len(), RETURNING + 1);
    assert_consistent(&pool, &f.chain);
}

#[test]
fn a_view_behind_the_pool_gets_the_transaction_handed_back() {
    let mut f = fixture();
    let mut pool = Mempool::new(&f.chain, DEFAULT_MAX_MEMPOOL_BYTES);
    let behind = f.chain.reader().view().unwrap();
    mine(&mut f, Vec::new());
    assert!(pool.catch_up(&f.chain));
    let tx = spend_coinbase(&f, 0, 1_000_000, 10_000);
    let txid = tx.txid();
    let back = match pool.try_accept(&behind, tx) {
        Err(back) => back,
        Ok(result) => panic!("judged against a view a block behind: {result:?}"),
    };
    assert_eq!(back.txid(), txid, "the same transaction, whole");
    assert!(!pool.contains(&txid));
    assert_eq!(pool.try_accept(&f.chain, back).unwrap().unwrap(), txid);
    assert!(pool.contains(&txid));
}
