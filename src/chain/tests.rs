//! Chain state tests against a real RocksDB in a temp dir.

use std::sync::Arc;

use super::*;
use crate::consensus::amount::Amount;
use crate::consensus::keys::PrivateKey;
use crate::consensus::transaction::{OutPoint, TxOut};
use crate::consensus::validation::TxError;
use crate::store::schema::{
    CF_ACTIVE_CHAIN, CF_ADDRESS_HISTORY, CF_ADDRESS_STATS, CF_ADDRESS_UTXO, CF_TX_INDEX, CF_UTXO,
};
use crate::testkit::{key, signed_spend, TestChain};

/// The column families that make up the ledger, compared byte for byte.
const STATE_CFS: [&str; 6] = [
    CF_UTXO,
    CF_ADDRESS_UTXO,
    CF_ADDRESS_HISTORY,
    CF_ADDRESS_STATS,
    CF_TX_INDEX,
    CF_ACTIVE_CHAIN,
];

fn open(dir: &tempfile::TempDir) -> Chain {
    crate::testkit::regtest_chain(dir.path())
}

fn state(chain: &Chain) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out: Vec<_> = STATE_CFS
        .iter()
        .map(|cf| chain.store().dump_cf(cf).unwrap())
        .collect();
    out.push(vec![(
        b"tip".to_vec(),
        chain.store().tip().unwrap().unwrap().encode(),
    )]);
    out
}

fn feed(chain: &mut Chain, blocks: &[Block]) -> Vec<BlockOutcome> {
    blocks
        .iter()
        .map(|b| chain.process_block(Arc::new(b.clone()), None).unwrap())
        .collect()
}

fn pay(to: &PrivateKey, units: u64) -> TxOut {
    TxOut {
        amount: Amount::from_units(units),
        owner: to.pubkey_hash(),
    }
}

/// A chain with 12 blocks mined to key(1), so early coinbases are mature.
fn prefix() -> TestChain {
    let mut chain = TestChain::new(Network::Regtest);
    for _ in 0..12 {
        chain.mine_empty(key(1).pubkey_hash());
    }
    chain
}

/// Extends `base` by `n` blocks, each spending one mature output of key(1)
/// to `to` (with change and a fee) and paying the coinbase to `miner`.
fn branch(
    base: &TestChain,
    n: usize,
    to: &PrivateKey,
    miner: &PrivateKey,
) -> (TestChain, Vec<Block>) {
    let mut chain = base.clone();
    let owner = key(1);
    let mut blocks = Vec::new();
    for i in 0..n {
        let (outpoint, utxo) = chain.spendable(owner.pubkey_hash())[0];
        let amount = utxo.output.amount.units();
        let tx = signed_spend(
            &[(outpoint, utxo.output, &owner)],
            vec![pay(to, 1_000_000 * (i as u64 + 1)), pay(&owner, amount / 2)],
        );
        let block = chain.build_block(miner.pubkey_hash(), vec![tx]);
        chain.apply(block.clone());
        blocks.push(block);
    }
    (chain, blocks)
}

#[test]
fn genesis_state_survives_reopen_without_replay() {
    let dir = tempfile::tempdir().unwrap();
    let tip = open(&dir).tip();
    assert_eq!(tip.height, 0);
    assert_eq!(tip.hash, Network::Regtest.params().genesis_hash());
    assert_eq!(tip.utxo_count, 1);
    assert_eq!(tip.utxo_total, 50 * 100_000_000);
    assert_eq!(open(&dir).tip(), tip);
}

#[test]
fn opening_a_data_dir_as_another_network_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&dir));
    let err = Chain::open(dir.path(), Network::Main, ChainOptions::default())
        .err()
        .expect("wrong network must be refused");
    assert!(
        err.to_string().contains("network regtest, not main"),
        "{err}"
    );
}

#[test]
fn connect_then_disconnect_everything_restores_genesis_state_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open(&dir);
    let genesis_state = state(&chain);
    let genesis_digest = chain.tip().utxo_digest;
    let base = prefix();
    let (_, blocks) = branch(&base, 8, &key(3), &key(4));
    feed(&mut chain, &base.blocks[1..]);
    feed(&mut chain, &blocks);
    assert_eq!(chain.height(), 20);
    assert_ne!(state(&chain), genesis_state);
    chain.invalidate_block(&base.blocks[1].hash()).unwrap();
    assert_eq!(chain.height(), 0);
    assert_eq!(chain.tip().utxo_digest, genesis_digest);
    assert_eq!(state(&chain), genesis_state);
    assert!(check::check_store(chain.store()).unwrap().is_consistent());
}

#[test]
fn reorg_to_a_longer_branch_matches_a_node_that_only_saw_it() {
    let base = prefix();
    let (_, a) = branch(&base, 5, &key(3), &key(5));
    let (_, b) = branch(&base, 6, &key(6), &key(7));

    let dir_x = tempfile::tempdir().unwrap();
    let mut x = open(&dir_x);
    let mut events = x.subscribe();
    feed(&mut x, &base.blocks[1..]);
    feed(&mut x, &a);
    assert_eq!(x.tip().hash, a[4].hash());
    assert!(
        x.store()
            .address_stats(&key(3).pubkey_hash())
            .unwrap()
            .balance()
            > 0
    );
    feed(&mut x, &b);
    assert_eq!(x.tip().hash, b[5].hash());

    let dir_y = tempfile::tempdir().unwrap();
    let mut y = open(&dir_y);
    feed(&mut y, &base.blocks[1..]);
    feed(&mut y, &b);

    // Reached by a third path: part of b, then all of a, then the rest.
    let dir_z = tempfile::tempdir().unwrap();
    let mut z = open(&dir_z);
    feed(&mut z, &base.blocks[1..]);
    feed(&mut z, &b[..3]);
    feed(&mut z, &a);
    feed(&mut z, &b[3..]);

    assert_eq!(state(&x), state(&y));
    assert_eq!(state(&z), state(&y));
    assert_eq!(x.tip(), y.tip());
    assert_eq!(z.tip().utxo_digest, y.tip().utxo_digest);
    assert_eq!(
        x.store()
            .address_stats(&key(3).pubkey_hash())
            .unwrap()
            .balance(),
        0
    );
    for chain in [&x, &y, &z] {
        assert!(check::check_store(chain.store()).unwrap().is_consistent());
    }

    // The events tell the story: a's 5 blocks disconnected, b's 6 connected.
    let mut disconnected = 0;
    while let Ok(event) = events.try_recv() {
        if let ChainEvent::BlockDisconnected { .. } = event {
            disconnected += 1;
        }
    }
    assert_eq!(disconnected, 5);
}

#[test]
fn reorg_onto_a_branch_with_an_invalid_block_ends_on_the_best_valid_chain() {
    let base = prefix();
    let (_, a) = branch(&base, 5, &key(3), &key(5));
    // Branch b: b3 pays its coinbase 1 unit too much (valid on its own,
    // invalid in context), and b4..b7 build on it.
    let mut b_chain = base.clone();
    let mut b = Vec::new();
    for i in 0..7 {
        let mut block = b_chain.build_block(key(6).pubkey_hash(), vec![]);
        if i == 2 {
            block.transactions[0].outputs[0].amount = Amount::from_units(50 * 100_000_000 + 1);
            block.header.merkle_root = block.compute_merkle_root().0;
            crate::mining::solve_block(&mut block);
        }
        b_chain.apply(block.clone());
        b.push(block);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open(&dir);
    feed(&mut chain, &base.blocks[1..]);
    feed(&mut chain, &a);
    let outcomes = feed(&mut chain, &b);
    // b6 has more work than a: the switch fails at b3, and b3's error is
    // reported for b6's arrival only as an invalid ancestor.
    assert_eq!(chain.tip().hash, a[4].hash());
    assert!(
        matches!(outcomes[5], BlockOutcome::InvalidAncestor),
        "{:?}",
        outcomes[5]
    );
    assert!(matches!(outcomes[6], BlockOutcome::InvalidAncestor));
    assert!(chain.index_entry(&b[2].hash()).unwrap().has(status::FAILED));
    assert!(chain
        .index_entry(&b[6].hash())
        .unwrap()
        .has(status::FAILED_PARENT));

    let dir_ref = tempfile::tempdir().unwrap();
    let mut reference = open(&dir_ref);
    feed(&mut reference, &base.blocks[1..]);
    feed(&mut reference, &a);
    assert_eq!(state(&chain), state(&reference));
    assert!(check::check_store(chain.store()).unwrap().is_consistent());

    // The invalid block itself, sent again, is refused at once.
    assert_eq!(
        chain.process_block(Arc::new(b[2].clone()), None).unwrap(),
        BlockOutcome::InvalidAncestor
    );
}

#[test]
fn invalid_block_extending_the_tip_reports_its_rule() {
    let base = prefix();
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open(&dir);
    feed(&mut chain, &base.blocks[1..]);
    // Spend the newest coinbase (height 12) at height 13: immature.
    let coinbase = &base.tip().transactions[0];
    let outpoint = OutPoint::new(coinbase.txid(), 0);
    let tx = signed_spend(
        &[(outpoint, coinbase.outputs[0], &key(1))],
        vec![pay(&key(2), 1)],
    );
    let block = base.build_block(key(1).pubkey_hash(), vec![tx]);
    match chain.process_block(Arc::new(block), None).unwrap() {
        BlockOutcome::Invalid(BlockError::InvalidTransaction {
            error: TxError::ImmatureCoinbase { .. },
            ..
        }) => {}
        other => panic!("expected an immature coinbase rejection, got {other:?}"),
    }
    assert_eq!(chain.height(), 12);
}

#[test]
fn orphans_received_in_reverse_order_all_connect() {
    let base = prefix();
    let (_, blocks) = branch(&base, 6, &key(3), &key(4));
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open(&dir);
    feed(&mut chain, &base.blocks[1..]);
    for block in blocks.iter().rev().take(5) {
        assert_eq!(
            chain
                .process_block(Arc::new(block.clone()), Some(1))
                .unwrap(),
            BlockOutcome::Orphan
        );
    }
    assert_eq!(chain.orphan_count(), 5);
    assert_eq!(chain.height(), 12);
    feed(&mut chain, &blocks[..1]);
    assert_eq!(chain.orphan_count(), 0);
    assert_eq!(chain.tip().hash, blocks[5].hash());
    assert!(check::check_store(chain.store()).unwrap().is_consistent());
}

#[test]
fn state_survives_reopen_and_check_finds_planted_damage() {
    let base = prefix();
    let (_, blocks) = branch(&base, 3, &key(3), &key(4));
    let dir = tempfile::tempdir().unwrap();
    let tip = {
        let mut chain = open(&dir);
        feed(&mut chain, &base.blocks[1..]);
        feed(&mut chain, &blocks);
        chain.tip()
    };
    let chain = open(&dir);
    assert_eq!(chain.tip(), tip);
    assert!(check::check_store(chain.store()).unwrap().is_consistent());
    let (outpoint, _, _) = chain
        .store()
        .address_utxos(&key(3).pubkey_hash(), None, 1)
        .unwrap()[0];
    chain
        .store()
        .damage_for_test(CF_UTXO, &crate::store::schema::outpoint_key(&outpoint))
        .unwrap();
    let report = check::check_store(chain.store()).unwrap();
    assert!(!report.is_consistent());
    assert!(
        report
            .differences
            .iter()
            .any(|d| d.contains("UTXOs stored")),
        "{report:?}"
    );
}

#[test]
fn address_index_answers_balances_utxos_and_history() {
    let base = prefix();
    let (_, blocks) = branch(&base, 4, &key(3), &key(4));
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open(&dir);
    feed(&mut chain, &base.blocks[1..]);
    feed(&mut chain, &blocks);
    let receiver = key(3).pubkey_hash();
    let stats = chain.store().address_stats(&receiver).unwrap();
    assert_eq!(stats.funded_txo_count, 4);
    assert_eq!(stats.balance(), 1_000_000 * (1 + 2 + 3 + 4));
    assert_eq!(stats.tx_count, 4);
    let utxos = chain.store().address_utxos(&receiver, None, 3).unwrap();
    assert_eq!(utxos.len(), 3);
    let rest = chain
        .store()
        .address_utxos(&receiver, Some(&utxos[2].0), 10)
        .unwrap();
    assert_eq!(rest.len(), 1);
    let history = chain.store().address_history(&receiver, None, 10).unwrap();
    assert_eq!(history.len(), 4);
    assert!(history[0].0 > history[3].0, "newest first");
    let older = chain
        .store()
        .address_history(&receiver, Some((history[1].0, history[1].1)), 10)
        .unwrap();
    assert_eq!(older, history[2..].to_vec());
}
