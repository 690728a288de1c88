//! Mempool rules against a real chain in a temp dir.

use std::sync::Arc;

use super::*;
use crate::consensus::hash::sha256d;
use crate::consensus::keys::PrivateKey;
use crate::consensus::params::Network;
use crate::consensus::transaction::TxIn;
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
        vec![pay(&key(2), 1)],
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
    assert_eq!(pool.remove_with_descendants(&chain[0].txid()), 3);
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
    let size_of = |tx: &Transaction| tx.encoded_len();
    let mid = spend_coinbase(&f, 1, 1_000_000, 20_000);
    let high = spend_coinbase(&f, 2, 1_000_000, 50_000);
    // Room for three of these transactions, not four.
    let limit = size_of(&low_chain[0]) * 3 + 10;
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
    // Something paying less than what is left cannot get in.
    let poor = spend_coinbase(&f, 3, 1_000_000, 1_000);
    pool.accept(&f.chain, spend_coinbase(&f, 4, 1_000_000, 30_000))
        .unwrap();
    assert!(matches!(
        pool.accept(&f.chain, poor),
        Err(MempoolError::Full { .. })
    ));
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
            .address_entries(&owner.pubkey_hash(), 50)
            .iter()
            .map(|e| e.txid)
            .collect();
        assert_eq!(listed, vec![txid]);
    }
    assert!(pool.address_entries(&key(9).pubkey_hash(), 50).is_empty());
    assert!(pool.address_entries(&key(1).pubkey_hash(), 0).is_empty());
    // Leaving the pool leaves the owner index too.
    assert_eq!(pool.remove_with_descendants(&txid), 1);
    assert!(pool.by_owner.is_empty());
    assert_eq!(
        pool.address_stats(&key(2).pubkey_hash()),
        Default::default()
    );
}
