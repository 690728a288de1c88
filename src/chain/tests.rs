//! Chain state tests against a real RocksDB in a temp dir.

use std::sync::Arc;

use super::*;
use crate::consensus::amount::Amount;
use crate::consensus::keys::PrivateKey;
use crate::consensus::transaction::{OutPoint, TxOut};
use crate::consensus::validation::TxError;
use crate::store::schema::{
    CF_ACTIVE_CHAIN, CF_ADDRESS_HISTORY, CF_ADDRESS_STATS, CF_ADDRESS_UTXO, CF_BLOCK_DATA,
    CF_BLOCK_INDEX, CF_META, CF_SCRIPT_HASH, CF_SPENT_BY, CF_TX_INDEX, CF_UNDO, CF_UTXO,
};
use crate::testkit::{key, signed_spend, TestChain};

/// The column families that make up the ledger, compared byte for byte.
const STATE_CFS: [&str; 8] = [
    CF_UTXO,
    CF_ADDRESS_UTXO,
    CF_ADDRESS_HISTORY,
    CF_ADDRESS_STATS,
    CF_TX_INDEX,
    CF_SPENT_BY,
    CF_SCRIPT_HASH,
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
    out.push(vec![
        (
            b"tip".to_vec(),
            chain.store().tip().unwrap().unwrap().encode(),
        ),
        (
            b"utxo_digest".to_vec(),
            chain
                .store()
                .utxo_digest_state()
                .unwrap()
                .unwrap()
                .to_bytes()
                .to_vec(),
        ),
    ]);
    out
}

fn feed(chain: &mut Chain, blocks: &[Block]) -> Vec<BlockOutcome> {
    blocks
        .iter()
        .map(|b| chain.process_block(Arc::new(b.clone()), None).unwrap())
        .collect()
}

/// The readers' copy of the header tree is the writer's as of the last
/// publish: every entry, its links, the active chain and the best header.
fn assert_readers_tree_matches(chain: &Chain) {
    let reader = chain.reader();
    let copy = reader.headers().read();
    let writer = chain.tree();
    assert_eq!(copy.active, writer.active, "active chains differ");
    assert_eq!(copy.best_header(), writer.best_header());
    assert_eq!(copy.index_len(), writer.index_len());
    for (hash, entry) in writer.index.iter() {
        assert_eq!(copy.index_entry(hash), Some(entry), "entry of {hash}");
        assert_eq!(copy.index.is_linked(hash), writer.index.is_linked(hash));
        let height = entry.height / 2;
        assert_eq!(copy.ancestor(hash, height), writer.ancestor(hash, height));
    }
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
    assert_readers_tree_matches(&x);
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
        assert_readers_tree_matches(chain);
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
        .index_entry(&b[5].hash())
        .unwrap()
        .has(status::FAILED_PARENT));
    // b7 came after its ancestors failed: refused, and not indexed.
    assert!(chain.index_entry(&b[6].hash()).is_none());

    let dir_ref = tempfile::tempdir().unwrap();
    let mut reference = open(&dir_ref);
    feed(&mut reference, &base.blocks[1..]);
    feed(&mut reference, &a);
    assert_eq!(state(&chain), state(&reference));
    assert!(check::check_store(chain.store()).unwrap().is_consistent());
    assert_readers_tree_matches(&chain);

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

/// `chaincore check` sees a digest state that is not the UTXO set's, even
/// when the tip record's fingerprint still names the right one.
#[test]
fn check_finds_a_damaged_digest_state() {
    use crate::store::cache::StateWrites;
    use crate::store::schema::{encode_digest_state, meta, CF_META};
    let base = prefix();
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open(&dir);
    feed(&mut chain, &base.blocks[1..]);
    chain.flush().unwrap();
    assert!(check::check_store(chain.store()).unwrap().is_consistent());
    let mut bytes = chain
        .store()
        .utxo_digest_state()
        .unwrap()
        .unwrap()
        .to_bytes();
    bytes[100] ^= 1;
    let damaged = crate::store::digest::UtxoDigest::from_bytes(&bytes);
    let mut batch = chain.store().batch();
    batch.put(CF_META, meta::UTXO_DIGEST, &encode_digest_state(&damaged));
    chain.store().write(batch, false).unwrap();
    let report = check::check_store(chain.store()).unwrap();
    assert_eq!(
        report.differences,
        vec!["stored UTXO digest state differs from the replayed set's".to_string()]
    );
}

/// `chaincore check` sees a spent-by row or a script hash row gone.
#[test]
fn check_finds_a_missing_spender_and_a_missing_script_hash() {
    use crate::store::cache::StateWrites;
    let base = prefix();
    let (_, blocks) = branch(&base, 3, &key(3), &key(4));
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open(&dir);
    feed(&mut chain, &base.blocks[1..]);
    feed(&mut chain, &blocks);
    chain.flush().unwrap();
    assert!(check::check_store(chain.store()).unwrap().is_consistent());
    let spent = blocks[1].transactions[1].inputs[0].prevout();
    assert!(chain.store().spender(&spent).unwrap().is_some());
    let mut batch = chain.store().batch();
    batch.delete_spender(&spent);
    chain.store().write(batch, false).unwrap();
    let report = check::check_store(chain.store()).unwrap();
    assert!(
        report
            .differences
            .iter()
            .any(|d| d.contains("spent-by row of")),
        "{report:?}"
    );
    let owner = key(3).pubkey_hash();
    let hash = crate::store::schema::script_hash(&owner);
    assert_eq!(
        chain.store().owner_of_script_hash(&hash).unwrap(),
        Some(owner)
    );
    let mut batch = chain.store().batch();
    batch.delete_script_hash(&owner);
    chain.store().write(batch, false).unwrap();
    let report = check::check_store(chain.store()).unwrap();
    assert!(
        report
            .differences
            .iter()
            .any(|d| d.contains("script hash rows")),
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

fn open_with(dir: &tempfile::TempDir, options: ChainOptions) -> Chain {
    Chain::open(
        dir.path(),
        Network::Regtest,
        ChainOptions {
            sync_writes: false,
            ..options
        },
    )
    .unwrap()
}

/// The block index and block bodies, byte for byte: what a block costs on disk.
fn stored_blocks(chain: &Chain) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
    [CF_BLOCK_INDEX, CF_BLOCK_DATA]
        .iter()
        .map(|cf| chain.store().dump_cf(cf).unwrap())
        .collect()
}

/// A chain holding `base`'s blocks whose clock reads `now` until moved.
fn on_manual_clock(base: &TestChain, now: u32) -> (tempfile::TempDir, Clock, Chain) {
    let clock = Clock::manual(now);
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open_with(
        &dir,
        ChainOptions {
            clock: clock.clone(),
            ..ChainOptions::default()
        },
    );
    feed(&mut chain, &base.blocks[1..]);
    (dir, clock, chain)
}

/// A block's time is judged against the clock when the block is accepted:
/// one stored while its time was fine still connects after the clock has
/// stepped back (NTP, a resumed machine), and is not marked failed.
#[test]
fn a_stored_block_connects_after_the_clock_steps_back() {
    let base = prefix();
    let allowance = base.params.max_future_block_time_secs;
    let mut ahead = base.clone();
    let first = ahead.build_block(key(1).pubkey_hash(), Vec::new());
    ahead.apply(first.clone());
    let second = ahead.build_block(key(1).pubkey_hash(), Vec::new());
    assert!(first.header.time < second.header.time);
    let (_dir, clock, mut chain) = on_manual_clock(&base, second.header.time);
    chain
        .process_headers(&[first.header, second.header])
        .unwrap();
    // The second block arrives first and is stored, waiting for its parent.
    chain
        .process_block(Arc::new(second.clone()), Some(1))
        .unwrap();
    assert_eq!(chain.tip().height, 12);
    // The clock steps back: the second block's time is now too new to
    // accept, but it was accepted already.
    clock.set(second.header.time - allowance - 1);
    chain
        .process_block(Arc::new(first.clone()), Some(1))
        .unwrap();
    assert_eq!(chain.tip().hash, second.hash());
    assert!(!chain.index_entry(&second.hash()).unwrap().is_failed());
}

#[test]
fn a_block_too_far_ahead_of_the_clock_is_refused_for_now_then_accepted() {
    let base = prefix();
    let allowance = base.params.max_future_block_time_secs;
    let block = base.build_block(key(1).pubkey_hash(), Vec::new());
    let (_dir, clock, mut chain) = on_manual_clock(&base, block.header.time - allowance - 1);
    let before = stored_blocks(&chain);

    // One second too new: refused, and nothing is cached against it.
    let outcome = chain
        .process_block(Arc::new(block.clone()), Some(1))
        .unwrap();
    assert!(
        matches!(
            outcome,
            BlockOutcome::Deferred(BlockError::TimeTooNew { .. })
        ),
        "{outcome:?}"
    );
    let headers = chain.process_headers(&[block.header]).unwrap();
    assert!(headers.deferred && headers.invalid.is_none() && headers.new == 0);
    assert!(chain.index_entry(&block.hash()).is_none());
    assert_eq!(stored_blocks(&chain), before);

    // Once the clock reaches the allowance, the same block connects.
    clock.set(block.header.time - allowance);
    assert_eq!(
        chain
            .process_block(Arc::new(block.clone()), Some(1))
            .unwrap(),
        BlockOutcome::Accepted {
            hash: block.hash(),
            height: 13
        }
    );
    assert_eq!(chain.tip().hash, block.hash());
}

/// A header that breaks a contextual rule (here its time is not above the
/// median of the last 11) costs its maker only the work its own bits
/// claim: it is refused, as a header and as a block, and never indexed or
/// written, however often it comes.
#[test]
fn a_header_that_breaks_a_contextual_rule_is_refused_without_being_indexed() {
    let base = prefix();
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open(&dir);
    feed(&mut chain, &base.blocks[1..]);
    let before = stored_blocks(&chain);
    let index_len = chain.reader().published().index_len;
    let ahead = base.clone();
    let mut block = ahead.build_block(key(1).pubkey_hash(), Vec::new());
    block.header.time = 1;
    crate::mining::solve_block(&mut block);
    for _ in 0..2 {
        let headers = chain.process_headers(&[block.header]).unwrap();
        assert!(
            matches!(
                headers.invalid,
                Some(HeaderRejection::Invalid(BlockError::TimeTooOld { .. }))
            ),
            "{headers:?}"
        );
        assert_eq!(headers.new, 0);
        for requested in [Some(1), None] {
            let outcome = chain
                .process_block(Arc::new(block.clone()), requested)
                .unwrap();
            assert!(
                matches!(
                    outcome,
                    BlockOutcome::Invalid(BlockError::TimeTooOld { .. })
                ),
                "{outcome:?}"
            );
        }
    }
    assert!(chain.index_entry(&block.hash()).is_none());
    assert_eq!(chain.reader().published().index_len, index_len);
    assert_eq!(stored_blocks(&chain), before);
    assert_eq!(chain.tip().hash, base.tip().hash());
}

/// A body that breaks a block rule marks its indexed header failed when the
/// header commits to it (merkle root matching, tree unmutated): no body can
/// be valid for that header, so it is neither asked for again nor the best
/// header. A body the header does not commit to marks nothing: the honest
/// body still connects.
#[test]
fn a_header_committing_to_an_invalid_body_is_marked_failed_and_a_tampered_body_marks_nothing() {
    use crate::consensus::transaction::TxIn;
    let base = prefix();
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open(&dir);
    feed(&mut chain, &base.blocks[1..]);
    let second_coinbase = |block: &Block| {
        let mut extra = block.transactions[0].clone();
        extra.inputs[0] = TxIn::Coinbase {
            height: 999,
            extra_nonce: 7,
        };
        extra
    };

    // Two coinbases, committed to by the header.
    let mut bad = base.build_block(key(1).pubkey_hash(), Vec::new());
    let extra = second_coinbase(&bad);
    bad.transactions.push(extra);
    bad.header.merkle_root = bad.compute_merkle_root().0;
    crate::mining::solve_block(&mut bad);
    assert_eq!(chain.process_headers(&[bad.header]).unwrap().new, 1);
    assert_eq!(chain.best_header().0, bad.hash());
    let outcome = chain.process_block(Arc::new(bad.clone()), Some(1)).unwrap();
    assert!(
        matches!(
            outcome,
            BlockOutcome::Invalid(BlockError::ExtraCoinbase { .. })
        ),
        "{outcome:?}"
    );
    assert!(chain.index_entry(&bad.hash()).unwrap().is_failed());
    assert_eq!(chain.best_header().0, base.tip().hash());

    // The honest block's header, with a transaction added to its body:
    // refused, nothing marked, and the honest body connects.
    let good = base.build_block(key(2).pubkey_hash(), Vec::new());
    assert_eq!(chain.process_headers(&[good.header]).unwrap().new, 1);
    let mut tampered = good.clone();
    let extra = second_coinbase(&good);
    tampered.transactions.push(extra);
    let outcome = chain.process_block(Arc::new(tampered), Some(1)).unwrap();
    assert!(matches!(outcome, BlockOutcome::Invalid(_)), "{outcome:?}");
    assert!(!chain.index_entry(&good.hash()).unwrap().is_failed());
    assert_eq!(
        chain
            .process_block(Arc::new(good.clone()), Some(1))
            .unwrap(),
        BlockOutcome::Accepted {
            hash: good.hash(),
            height: 13
        }
    );
    assert_eq!(chain.tip().hash, good.hash());
}

/// A chain of the prefix and two blocks that spend, stored in `dir`, and
/// its tip's hash and index entry.
fn stored_with_spends(dir: &tempfile::TempDir) -> (BlockHash, BlockIndexEntry) {
    let (_, blocks) = branch(&prefix(), 2, &key(2), &key(3));
    let mut chain = open(dir);
    feed(&mut chain, &prefix().blocks[1..]);
    feed(&mut chain, &blocks);
    let tip = chain.tip().hash;
    (tip, *chain.index_entry(&tip).unwrap())
}

#[test]
fn undo_data_that_does_not_fit_its_block_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (tip, _) = stored_with_spends(&dir);
    // The tip's undo data, well-formed but with no rows (its block spends
    // one output): disconnecting it is refused with the cause.
    put_raw_closed(
        &dir,
        CF_UNDO,
        &tip.0,
        &crate::store::schema::encode_undo(&[]),
    );
    let mut chain = open(&dir);
    let error = chain.invalidate_block(&tip).unwrap_err();
    assert!(
        matches!(&error, ChainError::Inconsistent(m) if m.contains("undo data")),
        "{error}"
    );
}

#[test]
fn a_body_stored_under_another_blocks_hash_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (tip, entry) = stored_with_spends(&dir);
    let (store, _) = Store::open_existing(dir.path(), &Default::default()).unwrap();
    let parent = store.block(&entry.header.prev_hash).unwrap().unwrap();
    drop(store);
    put_raw_closed(&dir, CF_BLOCK_DATA, &tip.0, &parent.to_bytes());
    let (store, _) = Store::open_existing(dir.path(), &Default::default()).unwrap();
    let error = store.block(&tip).unwrap_err();
    assert!(
        matches!(error, StoreError::Corrupt { what: "block", .. }),
        "{error}"
    );
}

#[test]
fn a_corrupt_block_index_entry_or_tip_record_is_an_error_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (tip, entry) = stored_with_spends(&dir);
    let reopen = |dir: &tempfile::TempDir| {
        Chain::open(dir.path(), Network::Regtest, Default::default())
            .err()
            .map(|e| e.to_string())
    };
    // Each corruption alone, then the stored value put back.
    let mut far = entry;
    far.height += 256;
    let mut heavy = entry;
    heavy.chain_work += U256::from(1u64 << 40);
    let mut other = entry;
    other.header.nonce ^= 1;
    for (corrupt, cause) in [
        (far, "height"),
        (heavy, "chain work"),
        (other, "does not hash to its key"),
    ] {
        put_raw_closed(&dir, CF_BLOCK_INDEX, &tip.0, &corrupt.encode());
        let error = reopen(&dir).expect("a corrupt index entry refused");
        assert!(error.contains(cause), "{error}");
        // `chaincore check` finds it too.
        let (store, _) = Store::open_read_only(dir.path(), &Default::default()).unwrap();
        let report = check::check_store(&store).unwrap();
        assert!(
            report.differences.iter().any(|d| d.contains(cause)),
            "{report:?}"
        );
        drop(store);
        put_raw_closed(&dir, CF_BLOCK_INDEX, &tip.0, &entry.encode());
    }
    assert_eq!(reopen(&dir), None, "the store as it was opens");
    // A tip record whose height is not its block's: refused before the
    // active chain is sized by it.
    let (store, _) = Store::open_existing(dir.path(), &Default::default()).unwrap();
    let record = store.tip().unwrap().unwrap();
    drop(store);
    let wrong = ChainTipRecord {
        height: u32::MAX,
        ..record
    };
    put_raw_closed(
        &dir,
        CF_META,
        crate::store::schema::meta::TIP,
        &wrong.encode(),
    );
    let error = reopen(&dir).expect("a corrupt tip record refused");
    assert!(error.contains("not indexed at its height"), "{error}");
    // A UTXO count below what the tip's block created: disconnecting it
    // is refused, and nothing panics.
    let counted = ChainTipRecord {
        utxo_count: 0,
        ..record
    };
    put_raw_closed(
        &dir,
        CF_META,
        crate::store::schema::meta::TIP,
        &counted.encode(),
    );
    let mut chain = open(&dir);
    let error = chain
        .invalidate_block(&tip)
        .expect_err("a count that cannot move is refused");
    assert!(error.to_string().contains("UTXO count"), "{error}");
}

/// Writes a raw value into the store in `dir`, with no chain open.
fn put_raw_closed(dir: &tempfile::TempDir, cf: &str, key: &[u8], value: &[u8]) {
    let (store, _) = Store::open_existing(dir.path(), &Default::default()).unwrap();
    store.put_raw(cf, key, value);
}

#[test]
fn a_block_of_the_wrong_difficulty_is_refused_before_its_body_is_checked() {
    let base = prefix();
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open(&dir);
    feed(&mut chain, &base.blocks[1..]);
    // A block on the tip claiming a harder target than the chain's (its
    // proof of work meets it) over a body its header does not commit to:
    // the difficulty is judged first, so the body costs nothing, whether
    // a peer sent the block unasked or a miner submitted it.
    let mut block = base.build_block(key(1).pubkey_hash(), Vec::new());
    let expected = block.header.bits;
    block.header.bits = 0x2000_ffff;
    block.header.merkle_root = crate::consensus::hash::Hash256([7; 32]);
    crate::mining::solve_block(&mut block);
    let block = Arc::new(block);
    for requested in [false, true] {
        let outcome = chain
            .process_new_block(block.clone(), Some(7), requested)
            .unwrap();
        assert_eq!(
            outcome,
            BlockOutcome::Invalid(BlockError::BadBits {
                expected,
                found: 0x2000_ffff
            })
        );
    }
    assert_eq!(chain.height(), 12);
    assert!(chain.index_entry(&block.hash()).is_none());
}

#[test]
fn unrequested_blocks_are_stored_only_on_a_chain_with_the_tips_work() {
    let base = prefix();
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open(&dir);
    feed(&mut chain, &base.blocks[1..]);
    let before = stored_blocks(&chain);

    // A child of genesis has far less work than the tip at 12: dropped,
    // and the data dir's block index and bodies are unchanged.
    let mut fork = TestChain::new(Network::Regtest);
    let low = fork.build_block(key(9).pubkey_hash(), Vec::new());
    fork.apply(low.clone());
    let low_child = fork.build_block(key(9).pubkey_hash(), Vec::new());
    assert_eq!(
        chain
            .process_new_block(Arc::new(low.clone()), Some(7), false)
            .unwrap(),
        BlockOutcome::NotStored
    );
    // Its child connects to nothing known: not kept either, not even in
    // the (memory) orphan pool.
    assert_eq!(
        chain
            .process_new_block(Arc::new(low_child), Some(7), false)
            .unwrap(),
        BlockOutcome::Orphan
    );
    assert_eq!(stored_blocks(&chain), before);
    assert_eq!(chain.orphan_count(), 0);

    // The same block, asked for, is stored as a side branch.
    assert!(matches!(
        chain
            .process_new_block(Arc::new(low.clone()), Some(7), true)
            .unwrap(),
        BlockOutcome::Accepted { .. }
    ));
    assert!(chain.tree().has_block(&low.hash()));
    assert_eq!(chain.height(), 12);

    // An unrequested block extending the tip is welcome.
    let next = base.build_block(key(1).pubkey_hash(), Vec::new());
    assert!(matches!(
        chain
            .process_new_block(Arc::new(next.clone()), Some(7), false)
            .unwrap(),
        BlockOutcome::Accepted { height: 13, .. }
    ));

    // Far ahead of the tip, even with more work, is too far to keep.
    let mut ahead = base.clone();
    ahead.apply(next);
    let mut far = Vec::new();
    for _ in 0..=MAX_UNREQUESTED_BLOCKS_AHEAD {
        let block = ahead.build_block(key(1).pubkey_hash(), Vec::new());
        ahead.apply(block.clone());
        far.push(block);
    }
    let headers: Vec<_> = far.iter().map(|b| b.header).collect();
    chain.process_headers(&headers).unwrap();
    let last = far.last().unwrap().clone();
    assert_eq!(
        chain
            .process_new_block(Arc::new(last), Some(7), false)
            .unwrap(),
        BlockOutcome::NotStored
    );
}

#[test]
fn among_branches_of_equal_work_the_first_seen_wins() {
    for first_is_x in [true, false] {
        let base = prefix();
        let dir = tempfile::tempdir().unwrap();
        let mut chain = open(&dir);
        feed(&mut chain, &base.blocks[1..]);
        // Fork below the tip (12): m at 12, then x and y at 13 on it.
        let mut fork = base.clone();
        fork.blocks.truncate(12);
        let m = fork.build_block(key(5).pubkey_hash(), Vec::new());
        fork.apply(m.clone());
        let x = fork.build_block(key(6).pubkey_hash(), Vec::new());
        let y = fork.build_block(key(7).pubkey_hash(), Vec::new());
        chain
            .process_headers(&[m.header, x.header, y.header])
            .unwrap();
        let (first, second) = if first_is_x { (&x, &y) } else { (&y, &x) };
        for block in [first, second, &m] {
            chain
                .process_block(Arc::new(block.clone()), Some(1))
                .unwrap();
        }
        assert_eq!(
            chain.tip().hash,
            first.hash(),
            "the branch whose block arrived first (x first: {first_is_x})"
        );
    }
}

#[test]
fn download_scheduling_and_locators_cost_the_same_at_any_distance() {
    /// Index steps to schedule downloads twice (fresh, then from the kept
    /// last common block) and to build a locator, with `ahead` headers.
    fn steps_with(ahead: usize) -> (u64, u64, usize) {
        let dir = tempfile::tempdir().unwrap();
        let mut chain = open(&dir);
        let genesis = Network::Regtest.params().genesis_block();
        let headers =
            crate::testkit::header_chain(genesis.hash(), genesis.header.time, ahead, 10, 1);
        for batch in headers.chunks(2_000) {
            assert_eq!(chain.process_headers(batch).unwrap().new, batch.len());
        }
        let best = headers.last().unwrap().hash();
        // The readers' copy, which the protocol asks.
        let reader = chain.reader();
        let tree = reader.headers().read();
        let before = tree.index_steps();
        let mut last_common = None;
        let first = tree
            .blocks_to_download(&best, &mut last_common, 1_024, 16, &|_| false)
            .blocks;
        let second = tree
            .blocks_to_download(&best, &mut last_common, 1_024, 16, &|h| {
                first.iter().any(|(f, _)| f == h)
            })
            .blocks;
        assert_eq!(first.len(), 16);
        assert_eq!(first[0].1, 1);
        assert_eq!(second[0].1, 17);
        let scheduling = tree.index_steps() - before;
        let before = tree.index_steps();
        let locator = tree.locator();
        (scheduling, tree.index_steps() - before, locator.len())
    }
    let (near_sched, near_loc, _) = steps_with(1_000);
    let (far_sched, far_loc, far_len) = steps_with(100_000);
    // A walk along the header path would visit 100 000 entries.
    assert!(
        far_sched <= near_sched + 200 && far_sched < 1_000,
        "scheduling: {near_sched} steps with 1 000 ahead, {far_sched} with 100 000"
    );
    assert!(
        far_loc <= 40 * far_len as u64,
        "locator: {near_loc} steps with 1 000 ahead, {far_loc} with 100 000 ({far_len} hashes)"
    );
}

/// The download plan names the block a full window waits for, and only
/// when the window alone keeps a peer from being asked anything.
#[test]
fn a_full_download_window_names_the_block_it_waits_for() {
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open(&dir);
    let genesis = Network::Regtest.params().genesis_block();
    let headers = crate::testkit::header_chain(genesis.hash(), genesis.header.time, 30, 10, 1);
    chain.process_headers(&headers).unwrap();
    let reader = chain.reader();
    let tree = reader.headers().read();
    let best = headers.last().unwrap().hash();
    let hash_at = |height: usize| headers[height - 1].hash();
    let plan_skipping = |window: u32, through: usize| {
        let asked: Vec<BlockHash> = (1..=through).map(hash_at).collect();
        tree.blocks_to_download(&best, &mut None, window, 16, &|h| asked.contains(h))
    };
    // Every block of a 10-block window asked of someone, and block 11 is
    // wanted: the window waits for block 1.
    let plan = plan_skipping(10, 10);
    assert!(plan.blocks.is_empty());
    assert_eq!(plan.waiting_for, Some(hash_at(1)));
    // One block of the window left to ask: asked, nobody is waited for.
    let plan = plan_skipping(10, 9);
    assert_eq!(plan.blocks, vec![(hash_at(10), 10)]);
    assert_eq!(plan.waiting_for, None);
    // Nothing past the window (it reaches the peer's best block): the
    // peer has nothing more to give, the window holds nothing back.
    let plan = plan_skipping(30, 30);
    assert_eq!(plan, DownloadPlan::default());
    // The block past the window asked too: nothing wanted from this peer.
    let plan = plan_skipping(10, 11);
    assert_eq!(plan, DownloadPlan::default());
}

#[test]
fn address_sums_past_u64_never_stop_a_block() {
    let base = prefix();
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open(&dir);
    feed(&mut chain, &base.blocks[1..]);
    // An address that has already received and spent almost 2^64 units in
    // total, as recycled coins can make it.
    let owner = key(2).pubkey_hash();
    let planted = crate::store::schema::AddressStats {
        funded_txo_count: 7,
        funded_txo_sum: u128::from(u64::MAX) - 10,
        spent_txo_count: 7,
        spent_txo_sum: u128::from(u64::MAX) - 10,
        tx_count: 7,
    };
    let mut batch = chain.store().batch();
    batch.put_address_stats(&owner, &planted);
    chain.store().write(batch, false).unwrap();

    let (_, blocks) = branch(&base, 1, &key(2), &key(3));
    assert!(matches!(
        feed(&mut chain, &blocks)[0],
        BlockOutcome::Accepted { .. }
    ));
    let stats = chain.store().address_stats(&owner).unwrap();
    assert_eq!(stats.funded_txo_sum, u128::from(u64::MAX) - 10 + 1_000_000);
    assert_eq!(stats.balance(), 1_000_000);
    // Stored and read back past u64, and reverted exactly on a disconnect.
    chain.invalidate_block(&blocks[0].hash()).unwrap();
    assert_eq!(chain.store().address_stats(&owner).unwrap(), planted);
}

// The write-back cache (`flush`): in catch-up, blocks collect in memory and
// reach the disk in batches; whatever the batch size, the disk ends up with
// the same bytes, and a crash only costs connecting the cached blocks again.

/// Every column family the chain writes, byte for byte, and the tip record.
fn full_state(chain: &Chain) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = state(chain);
    for cf in [crate::store::schema::CF_UNDO, CF_BLOCK_INDEX] {
        out.push(chain.store().dump_cf(cf).unwrap());
    }
    out
}

fn open_cached(dir: &tempfile::TempDir, cache_bytes: usize) -> Chain {
    open_with(
        dir,
        ChainOptions {
            cache_bytes,
            ..ChainOptions::default()
        },
    )
}

/// Feeds blocks as a catch-up does: every header first (so the best header
/// is far ahead of the tip), then the blocks.
fn catch_up(chain: &mut Chain, blocks: &[Block]) {
    let headers: Vec<_> = blocks.iter().map(|b| b.header).collect();
    for batch in headers.chunks(crate::wire::constants::MAX_HEADERS) {
        let outcome = chain.process_headers(batch).unwrap();
        assert!(
            outcome.invalid.is_none() && !outcome.unconnected,
            "{outcome:?}"
        );
    }
    feed(chain, blocks);
}

/// Cache limits from "every block" to "never full", through sizes that
/// flush every few blocks.
const CACHE_LIMITS: [usize; 5] = [0, 16 << 10, 64 << 10, 256 << 10, 1 << 30];

#[test]
fn cached_catch_up_writes_the_same_bytes_whatever_the_cache_size() {
    let test = crate::testkit::busy_chain(30, 8);
    let blocks = &test.blocks[1..];

    // The reference: no headers ahead, so every block is written as it
    // connects (the chain is at the tip all along).
    let dir = tempfile::tempdir().unwrap();
    let mut reference = open_cached(&dir, 1 << 30);
    feed(&mut reference, blocks);
    assert_eq!(reference.cache_usage().flushes, blocks.len() as u64);
    let expected = state(&reference);
    let expected_tip = reference.tip();

    let mut flushes = Vec::new();
    let mut block_index = None;
    for limit in CACHE_LIMITS {
        let dir = tempfile::tempdir().unwrap();
        let mut chain = open_cached(&dir, limit);
        catch_up(&mut chain, blocks);
        let usage = chain.cache_usage();
        assert_eq!(
            usage.rows, 0,
            "limit {limit}: at the tip the cache is empty"
        );
        assert_eq!(usage.flushed_height, expected_tip.height);
        assert_eq!(chain.tip(), expected_tip, "limit {limit}");
        assert_eq!(state(&chain), expected, "limit {limit}");
        // Undo data and block index too (VALID flags included), the same
        // for every cache size.
        let all = full_state(&chain);
        match &block_index {
            None => block_index = Some(all),
            Some(first) => assert_eq!(&all, first, "limit {limit}"),
        }
        assert!(check::check_store(chain.store()).unwrap().is_consistent());
        flushes.push(usage.flushes);
    }
    // No cache: one flush per block. A cache that never fills: one flush
    // when the tip comes within CATCH_UP_DISTANCE of the best header, then
    // one per block. Sizes in between: in between (how many of them run
    // in the background depends on how fast each lands).
    let blocks = blocks.len() as u64;
    let at_tip = u64::from(flush::CATCH_UP_DISTANCE);
    assert_eq!(flushes[0], blocks, "{flushes:?}");
    assert_eq!(*flushes.last().unwrap(), 1 + at_tip, "{flushes:?}");
    assert!(
        flushes[1..4]
            .iter()
            .all(|f| *f <= blocks && *f > 1 + at_tip)
            && flushes[3] < blocks,
        "{flushes:?}"
    );
}

#[test]
fn catch_up_writes_its_cache_in_the_background_while_blocks_connect() {
    let test = crate::testkit::busy_chain(40, 8);
    let blocks = &test.blocks[1..];
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open_cached(&dir, 256 << 10);
    let headers: Vec<_> = blocks.iter().map(|b| b.header).collect();
    chain.process_headers(&headers).unwrap();
    let mut landed_in_catch_up = 0;
    for (i, block) in blocks.iter().enumerate() {
        feed(&mut chain, std::slice::from_ref(block));
        assert_eq!(chain.height() as usize, i + 1);
        if !chain.catching_up() {
            continue;
        }
        let usage = chain.cache_usage();
        if usage.flushed_height > 0 {
            landed_in_catch_up += 1;
        }
        // The store holds a whole flush: the last one taken in, or one
        // written since, never more than the chain connected.
        let on_disk = chain.store().tip().unwrap().unwrap();
        assert!(
            on_disk.height >= usage.flushed_height && on_disk.height <= chain.height(),
            "{usage:?} {on_disk:?}"
        );
        // The chain reads through both layers: every payment so far
        // (output 0 of a busy block's spends, never spent) is in its UTXO
        // set, and so is the last change.
        for earlier in &blocks[..=i] {
            for tx in earlier.transactions.iter().skip(1) {
                if tx.outputs.len() == 2 {
                    assert!(chain.utxo(&OutPoint::new(tx.txid(), 0)).unwrap().is_some());
                }
            }
        }
        let last = block.transactions.last().unwrap();
        let change = OutPoint::new(last.txid(), last.outputs.len() as u32 - 1);
        assert!(chain.utxo(&change).unwrap().is_some());
        // Every connected block's body is on disk before the next block,
        // in the store or in the pending file (a kill now loses cached
        // state, never a body: the restart connects them again), and the
        // store is whole (read from a snapshot: a background write may be
        // landing).
        let pending = pending_bodies(&dir);
        for connected in &blocks[..=i] {
            assert!(
                pending.contains(connected)
                    || chain.store().block(&connected.hash()).unwrap().is_some(),
                "block {} is connected but neither stored nor pending",
                connected.hash()
            );
        }
        let report = check::check_store(&chain.store().snapshot()).unwrap();
        assert!(report.is_consistent(), "{report:?}");
    }
    assert!(landed_in_catch_up > 0, "no flush landed before the tip");
    // Some blocks came while a background write held the store: they
    // waited in memory and in the pending file, emptied once stored.
    assert!(chain.stage_times().deferred_blocks > 0);
    assert!(pending_bodies(&dir).is_empty());
    // At the tip everything is on disk, and the store equals one that
    // wrote every block as it connected.
    assert_eq!(chain.flushed_tip(), chain.tip());
    assert_eq!(chain.cache_usage().rows, 0);
    assert!(check::check_store(chain.store()).unwrap().is_consistent());
    let reference_dir = tempfile::tempdir().unwrap();
    let mut reference = open_cached(&reference_dir, 0);
    feed(&mut reference, blocks);
    assert_eq!(state(&chain), state(&reference));
    assert_eq!(chain.tip(), reference.tip());
}

/// The bodies in a data dir's pending file.
fn pending_bodies(dir: &tempfile::TempDir) -> Vec<Block> {
    match std::fs::File::open(dir.path().join(pending::PENDING_FILE)) {
        Ok(file) => block_file::read_blocks(std::io::BufReader::new(file)).unwrap(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_kill_while_received_bodies_wait_loses_none_of_them() {
    let test = crate::testkit::busy_chain(40, 8);
    let blocks = &test.blocks[1..];
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open_cached(&dir, 256 << 10);
    // Background writes are slow: the blocks received meanwhile wait in
    // memory, their bodies in the pending file only.
    chain
        .store()
        .slow_writes_from("chain-flush", Duration::from_secs(1));
    let headers: Vec<_> = blocks.iter().map(|b| b.header).collect();
    chain.process_headers(&headers).unwrap();
    let mut fed = 0;
    while chain.flushing.deferred.len() < 2 {
        assert!(fed < 30, "no block waited behind a background write");
        feed(&mut chain, &blocks[fed..=fed]);
        fed += 1;
    }
    assert!(chain.catching_up());
    let connected = chain.tip();
    assert_eq!(connected.height as usize, fed);
    let waiting: Vec<Block> = chain
        .flushing
        .deferred
        .iter()
        .map(|d| (*d.block).clone())
        .collect();
    for block in &waiting {
        assert!(chain.store().block(&block.hash()).unwrap().is_none());
    }
    assert_eq!(pending_bodies(&dir), waiting);

    // Killed: the cache and the waiting blocks are lost but for the file.
    let on_disk = chain.crash_for_test();
    assert!(on_disk.height < connected.height);
    {
        let store = Store::open(dir.path(), Network::Regtest, &StoreOptions::default()).unwrap();
        for block in &waiting {
            assert!(store.block(&block.hash()).unwrap().is_none());
        }
    }
    // Before the good records: a body that does not match its header (a
    // bad disk) and a block the store already holds, both skipped; after
    // them a torn record (a kill mid-append), ignored.
    let path = dir.path().join(pending::PENDING_FILE);
    let mut tampered = waiting[0].clone();
    tampered.transactions[1].outputs[0].owner = key(99).pubkey_hash();
    let mut bytes = Vec::new();
    block_file::write_blocks(&mut bytes, [&tampered, &blocks[0]]).unwrap();
    bytes.extend(std::fs::read(&path).unwrap());
    bytes.extend_from_slice(&1000u32.to_le_bytes());
    bytes.extend_from_slice(&[7; 10]);
    std::fs::write(&path, bytes).unwrap();

    // The restart stores them and connects every block it had connected.
    let mut chain = open_cached(&dir, 256 << 10);
    assert_eq!(chain.tip(), connected);
    assert!(!path.exists(), "the pending file is removed once read");
    for block in &waiting {
        assert!(chain.store().block(&block.hash()).unwrap().is_some());
    }
    // (From a snapshot: the restart's catch-up may be writing.)
    let report = check::check_store(&chain.store().snapshot()).unwrap();
    assert!(report.is_consistent(), "{report:?}");
    feed(&mut chain, &blocks[fed..]);
    assert_eq!(chain.height() as usize, blocks.len());
    let reference_dir = tempfile::tempdir().unwrap();
    let mut reference = open_cached(&reference_dir, 0);
    feed(&mut reference, blocks);
    assert_eq!(full_state(&chain), full_state(&reference));
}

#[test]
fn a_failed_background_write_loses_nothing() {
    let test = crate::testkit::busy_chain(40, 8);
    let blocks = &test.blocks[1..];
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open_cached(&dir, 256 << 10);
    // Every background write fails: each frozen layer stays behind the
    // cache, and the next flush writes it with the chain's own thread.
    chain.store().fail_writes_from("chain-flush", 1_000);
    catch_up(&mut chain, blocks);
    assert!(
        chain.store().failures_left() < 1_000,
        "background writes were tried"
    );
    assert!(
        chain.stage_times().background_writes.is_zero(),
        "no background write landed"
    );
    assert!(chain.cache_usage().flushes > 1 + u64::from(flush::CATCH_UP_DISTANCE));
    assert_eq!(chain.flushed_tip(), chain.tip());
    assert_eq!(chain.cache_usage().rows, 0);
    assert!(check::check_store(chain.store()).unwrap().is_consistent());
    for block in blocks {
        assert!(chain.store().block(&block.hash()).unwrap().is_some());
    }
    let reference_dir = tempfile::tempdir().unwrap();
    let mut reference = open_cached(&reference_dir, 0);
    feed(&mut reference, blocks);
    assert_eq!(state(&chain), state(&reference));
    assert_eq!(full_state(&chain), full_state(&reference));
}

#[test]
fn the_chain_reads_through_the_cache_while_the_store_keeps_the_last_flush() {
    let base = prefix();
    let (_, blocks) = branch(&base, 10, &key(3), &key(4));
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open_cached(&dir, 1 << 30);
    let all: Vec<Block> = base.blocks[1..].iter().chain(&blocks).cloned().collect();
    let headers: Vec<_> = all.iter().map(|b| b.header).collect();
    chain.process_headers(&headers).unwrap();
    feed(&mut chain, &all[..14]);
    assert!(chain.catching_up());
    assert_eq!(chain.height(), 14);
    let usage = chain.cache_usage();
    assert_eq!(
        (usage.flushes, usage.flushed_height, usage.blocks),
        (0, 0, 14)
    );
    assert!(usage.rows > 0 && usage.bytes > 0);
    // The store holds genesis alone, whole: its tip record and its state.
    assert_eq!(chain.store().tip().unwrap().unwrap().height, 0);
    assert_eq!(chain.flushed_tip().height, 0);
    assert_eq!(
        chain.flushed_tip().utxo_digest,
        chain
            .store()
            .utxo_digest_state()
            .unwrap()
            .unwrap()
            .fingerprint()
    );
    assert_eq!(
        chain.flushed_tip().utxo_digest,
        chain.store().tip().unwrap().unwrap().digest
    );
    assert!(check::check_store(chain.store()).unwrap().is_consistent());
    // The chain sees its tip: the payment of block 13 is unspent, confirmed.
    let payment = blocks[0].transactions[1].txid();
    let outpoint = OutPoint::new(payment, 0);
    assert!(chain.utxo(&outpoint).unwrap().is_some());
    assert!(chain.store().utxo(&outpoint).unwrap().is_none());
    assert_eq!(chain.tx_location(&payment).unwrap().unwrap().height, 13);
    assert!(chain.store().tx_location(&payment).unwrap().is_none());
    // A reader's view says it trails blocks the writer holds, so REST
    // answers at once instead of waiting for a flush.
    let view = chain.reader().view().unwrap();
    assert_eq!(view.height(), 0);
    assert!(view.trails_cached_blocks());
    // Reaching the tip writes everything; nothing stays behind.
    feed(&mut chain, &all[14..]);
    assert!(!chain.catching_up());
    assert!(!chain.reader().view().unwrap().trails_cached_blocks());
    assert_eq!(chain.cache_usage().rows, 0);
    assert_eq!(chain.store().tip().unwrap().unwrap().height, 22);
    assert_eq!(chain.flushed_tip(), chain.tip());
    assert!(chain.store().utxo(&outpoint).unwrap().is_some());
}

#[test]
fn a_reorg_across_cached_blocks_matches_an_uncached_node() {
    let base = prefix();
    let (_, a) = branch(&base, 5, &key(3), &key(5));
    let (_, b) = branch(&base, 16, &key(6), &key(7));

    // Without cache: b's headers, base, a (connected: more work than the
    // tip), then b, whose sixth block makes the chain leave a.
    let run = |limit: usize| {
        let dir = tempfile::tempdir().unwrap();
        let mut chain = open_cached(&dir, limit);
        let mut events = chain.subscribe();
        let headers: Vec<_> = base.blocks[1..]
            .iter()
            .chain(&b)
            .map(|blk| blk.header)
            .collect();
        chain.process_headers(&headers).unwrap();
        feed(&mut chain, &base.blocks[1..]);
        feed(&mut chain, &a);
        assert_eq!(chain.tip().hash, a[4].hash(), "limit {limit}");
        let on_a = chain.tip();
        feed(&mut chain, &b[..6]);
        assert_eq!(chain.tip().hash, b[5].hash(), "limit {limit}");
        let on_b = chain.tip();
        feed(&mut chain, &b[6..]);
        let mut disconnected = 0;
        while let Ok(event) = events.try_recv() {
            if let ChainEvent::BlockDisconnected { .. } = event {
                disconnected += 1;
            }
        }
        assert_eq!(disconnected, 5, "limit {limit}");
        assert!(check::check_store(chain.store()).unwrap().is_consistent());
        (on_a, on_b, chain.tip(), state(&chain), dir)
    };
    let (ref_a, ref_b, ref_tip, ref_state, _dir) = run(0);
    for limit in CACHE_LIMITS {
        let (on_a, on_b, tip, state, _dir) = run(limit);
        assert_eq!((on_a, on_b, tip), (ref_a, ref_b, ref_tip), "limit {limit}");
        assert_eq!(state, ref_state, "limit {limit}");
    }

    // And the same as a node that only ever saw b.
    let dir = tempfile::tempdir().unwrap();
    let mut y = open_cached(&dir, 1 << 30);
    catch_up(&mut y, &base.blocks[1..]);
    catch_up(&mut y, &b);
    assert_eq!(y.tip(), ref_tip);
    assert_eq!(state(&y), ref_state);
}

#[test]
fn a_crash_loses_only_cached_blocks_and_the_next_start_connects_them_again() {
    let test = crate::testkit::busy_chain(30, 8);
    let blocks = &test.blocks[1..];
    let dir = tempfile::tempdir().unwrap();
    let mut reference = open_cached(&dir, 0);
    feed(&mut reference, blocks);

    for limit in [1 << 30, 256 << 10] {
        let dir = tempfile::tempdir().unwrap();
        let mut chain = open_cached(&dir, limit);
        let headers: Vec<_> = blocks.iter().map(|b| b.header).collect();
        chain.process_headers(&headers).unwrap();
        feed(&mut chain, &blocks[..30]);
        // Crash with blocks in the cache: one more block if the last one
        // happened to fill it.
        let mut fed = 30;
        if chain.cache_usage().blocks == 0 {
            feed(&mut chain, &blocks[30..31]);
            fed = 31;
        }
        assert!(chain.catching_up());
        let before = chain.tip();
        let usage = chain.cache_usage();
        assert_eq!(before.height, fed as u32);
        assert!(
            usage.blocks > 0 && usage.flushed_height < before.height,
            "{usage:?}"
        );
        if limit < 1 << 30 {
            assert!(usage.flushed_height > 0, "{usage:?}");
        }
        let on_disk = chain.crash_for_test();
        // A background write under way when the chain crashed may have
        // landed, no more.
        assert!(
            on_disk.height >= usage.flushed_height && on_disk.height <= before.height,
            "{usage:?} {on_disk:?}"
        );
        if limit == 1 << 30 {
            // A cache that never reaches an eighth of its limit writes
            // nothing in the background: the crash loses cached blocks, and
            // the restart below must connect them again.
            assert_eq!(on_disk.height, usage.flushed_height);
            assert!(on_disk.height < before.height);
        }

        // On disk: the last flush, whole.
        {
            let store =
                Store::open(dir.path(), Network::Regtest, &StoreOptions::default()).unwrap();
            assert_eq!(store.tip().unwrap().unwrap().height, on_disk.height);
            assert!(check::check_store(&store).unwrap().is_consistent());
        }
        // The next start connects the stored blocks again, to the same tip.
        let mut chain = open_cached(&dir, limit);
        assert_eq!(chain.tip(), before, "limit {limit}");
        feed(&mut chain, &blocks[fed..]);
        assert_eq!(chain.tip(), reference.tip(), "limit {limit}");
        assert_eq!(state(&chain), state(&reference), "limit {limit}");
        assert!(check::check_store(chain.store()).unwrap().is_consistent());
    }
}

/// A format-1 data dir (no spent-by and script hash rows) is upgraded at
/// open: the rows built from its blocks equal those a node writes while
/// connecting the same blocks.
#[test]
fn a_format_1_store_is_upgraded_to_the_rows_a_node_writes() {
    use crate::store::cache::StateWrites;
    use crate::store::schema::{meta, CF_META};
    let dir = tempfile::tempdir().unwrap();
    let base = prefix();
    let (_, blocks) = branch(&base, 4, &key(3), &key(4));
    let expected = {
        let mut chain = open(&dir);
        feed(&mut chain, &base.blocks[1..]);
        feed(&mut chain, &blocks);
        chain.flush().unwrap();
        state(&chain)
    };
    {
        let store = crate::store::Store::open(
            dir.path(),
            Network::Regtest,
            &crate::store::StoreOptions::default(),
        )
        .unwrap();
        let mut batch = store.batch();
        let mut removed = 0;
        for cf in [CF_SPENT_BY, CF_SCRIPT_HASH] {
            for (k, _) in store.dump_cf(cf).unwrap() {
                batch.delete(cf, &k);
                removed += 1;
            }
        }
        assert_eq!(
            removed,
            4 + 4,
            "4 spends; owners: genesis payout, key(1), key(3), key(4)"
        );
        downgrade_tip_record(&store, &mut batch);
        batch.put(CF_META, meta::FORMAT_VERSION, &1u32.to_be_bytes());
        store.write(batch, true).unwrap();
    }
    let chain = open(&dir);
    assert_eq!(state(&chain), expected);
    assert!(check::check_store(chain.store()).unwrap().is_consistent());
}

/// Puts the tip record back in its format-2 layout (a 33-byte curve point
/// where format 3 has the fingerprint) and deletes the digest's state.
fn downgrade_tip_record(store: &crate::store::Store, batch: &mut crate::store::StoreBatch<'_>) {
    use crate::store::cache::StateWrites;
    use crate::store::schema::{meta, CF_META};
    let mut old = store.tip().unwrap().unwrap().encode();
    old.truncate(old.len() - 32);
    old.extend([0x02; 33]);
    batch.put(CF_META, meta::TIP, &old);
    batch.delete(CF_META, meta::UTXO_DIGEST);
}

/// A format-2 data dir (a curve multiset hash in the tip record) is
/// upgraded at open to the lattice digest a node computes while connecting
/// the same blocks; the rest of the store is untouched.
#[test]
fn a_format_2_store_is_upgraded_to_the_digest_a_node_computes() {
    use crate::store::cache::StateWrites;
    use crate::store::schema::{meta, CF_META};
    let dir = tempfile::tempdir().unwrap();
    let base = prefix();
    let (_, blocks) = branch(&base, 4, &key(3), &key(4));
    let (expected, expected_tip) = {
        let mut chain = open(&dir);
        feed(&mut chain, &base.blocks[1..]);
        feed(&mut chain, &blocks);
        chain.flush().unwrap();
        (state(&chain), chain.tip())
    };
    {
        let store = crate::store::Store::open(
            dir.path(),
            Network::Regtest,
            &crate::store::StoreOptions::default(),
        )
        .unwrap();
        let mut batch = store.batch();
        downgrade_tip_record(&store, &mut batch);
        batch.put(CF_META, meta::FORMAT_VERSION, &2u32.to_be_bytes());
        store.write(batch, true).unwrap();
        assert!(
            store.tip().is_err(),
            "the old record no longer reads as format 3"
        );
    }
    let chain = open(&dir);
    assert_eq!(chain.tip(), expected_tip);
    assert_eq!(state(&chain), expected);
    assert_eq!(
        chain
            .store()
            .utxo_digest_state()
            .unwrap()
            .unwrap()
            .fingerprint(),
        expected_tip.utxo_digest
    );
    assert!(check::check_store(chain.store()).unwrap().is_consistent());
}

/// A block whose only fault is a signature (checked alongside the
/// preparation of its rows) is refused with that error and leaves nothing
/// behind: not in the store, not in the cache, not in the digest.
#[test]
fn a_block_failing_only_its_signature_changes_no_state() {
    use crate::consensus::transaction::TxIn;
    let base = prefix();
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open(&dir);
    feed(&mut chain, &base.blocks[1..]);
    let (before_tip, before) = (chain.tip(), state(&chain));
    let owner = key(1);
    let (outpoint, utxo) = base.spendable(owner.pubkey_hash())[0];
    let mut tx = signed_spend(
        &[(outpoint, utxo.output, &owner)],
        vec![pay(&key(3), 1_000_000)],
    );
    let TxIn::Spend { signature, .. } = &mut tx.inputs[0] else {
        panic!("a spend")
    };
    signature[10] ^= 1;
    let block = base.clone().build_block(key(2).pubkey_hash(), vec![tx]);
    let outcome = chain.process_block(Arc::new(block), None).unwrap();
    assert!(
        matches!(
            outcome,
            BlockOutcome::Invalid(BlockError::InvalidTransaction {
                index: 1,
                error: TxError::BadSignature { index: 0, .. },
                ..
            })
        ),
        "{outcome:?}"
    );
    assert_eq!(chain.tip(), before_tip);
    assert_eq!(chain.cache_usage().rows, 0);
    assert_eq!(state(&chain), before);
    assert!(check::check_store(chain.store()).unwrap().is_consistent());
}

/// The offline check opens the store for reading only: beside a chain that
/// holds it open, it sees the chain's last written state, and changes
/// nothing in the data dir.
#[test]
fn the_offline_check_reads_a_store_a_chain_holds_open_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open(&dir);
    feed(&mut chain, &prefix().blocks[1..]);
    chain.flush().unwrap();
    let files = |dir: &tempfile::TempDir| {
        let mut names: Vec<(String, u64)> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        names.sort();
        names
    };
    let before = files(&dir);
    let (store, network) =
        crate::store::Store::open_read_only(dir.path(), &crate::store::StoreOptions::default())
            .unwrap();
    assert_eq!(network, Network::Regtest);
    let report = super::check::check_store(&store).unwrap();
    assert!(report.is_consistent(), "{report:?}");
    assert_eq!(report.height, chain.height());
    drop(store);
    assert_eq!(files(&dir), before);
}

/// A store whose digest state is gone, or is not the one its tip record
/// names, does not open: the chain would go on from a wrong digest.
#[test]
fn a_store_without_its_digest_state_does_not_open() {
    use crate::store::cache::StateWrites;
    use crate::store::schema::{encode_digest_state, meta, CF_META};
    let dir = tempfile::tempdir().unwrap();
    {
        let mut chain = open(&dir);
        feed(&mut chain, &prefix().blocks[1..]);
    }
    let damage = |write: &dyn Fn(&mut crate::store::StoreBatch<'_>)| {
        let store = crate::store::Store::open(
            dir.path(),
            Network::Regtest,
            &crate::store::StoreOptions::default(),
        )
        .unwrap();
        let mut batch = store.batch();
        write(&mut batch);
        store.write(batch, true).unwrap();
    };
    let good = {
        let chain = open(&dir);
        chain.store().utxo_digest_state().unwrap().unwrap()
    };
    damage(&|batch| batch.delete(CF_META, meta::UTXO_DIGEST));
    let opened = Chain::open(dir.path(), Network::Regtest, ChainOptions::default());
    assert!(
        matches!(&opened, Err(ChainError::Inconsistent(m)) if m.contains("no UTXO digest")),
        "{:?}",
        opened.err()
    );
    let mut other = good.clone();
    other.insert(
        &OutPoint::new(crate::consensus::hash::Hash256([9; 32]), 0),
        &base_utxo(),
    );
    damage(&|batch| batch.put(CF_META, meta::UTXO_DIGEST, &encode_digest_state(&other)));
    let opened = Chain::open(dir.path(), Network::Regtest, ChainOptions::default());
    assert!(
        matches!(&opened, Err(ChainError::Inconsistent(m)) if m.contains("not the one the tip record names")),
        "{:?}",
        opened.err()
    );
    damage(&|batch| batch.put(CF_META, meta::UTXO_DIGEST, &encode_digest_state(&good)));
    let chain = open(&dir);
    assert!(check::check_store(chain.store()).unwrap().is_consistent());
}

fn base_utxo() -> Utxo {
    Utxo {
        output: pay(&key(5), 1),
        height: 1,
        is_coinbase: false,
    }
}

/// Readers share one view between writes, and never keep it past one: a
/// block written, or a raw write, is in the next view at once.
#[test]
fn a_shared_view_lasts_until_the_next_write() {
    let base = prefix();
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open(&dir);
    feed(&mut chain, &base.blocks[1..5]);
    let reader = chain.reader();
    let first = reader.view().unwrap();
    assert_eq!(first.height(), 4);
    assert_eq!(reader.view().unwrap().tip(), first.tip());
    feed(&mut chain, &base.blocks[5..6]);
    assert_eq!(reader.view().unwrap().height(), 5);
    assert_eq!(first.height(), 4, "a view already taken stays where it was");
    let hash = reader.view().unwrap().hash_at(5).unwrap().unwrap();
    chain
        .store()
        .damage_for_test(CF_ACTIVE_CHAIN, &crate::store::schema::height_key(5))
        .unwrap();
    assert_ne!(reader.view().unwrap().hash_at(5).unwrap(), Some(hash));
}

#[test]
fn address_heights_name_each_height_with_history_once() {
    let base = prefix();
    // key(3) is paid twice in each block of the branch: its coinbase and a
    // spend (two history rows per height).
    let (_, blocks) = branch(&base, 4, &key(3), &key(3));
    let dir = tempfile::tempdir().unwrap();
    let mut chain = open(&dir);
    feed(&mut chain, &base.blocks[1..]);
    feed(&mut chain, &blocks);
    assert_eq!(chain.height(), 16);
    let store = chain.store();
    let heights = |k: u8, first, last| {
        store
            .address_heights(&key(k).pubkey_hash(), first, last)
            .unwrap()
    };
    assert_eq!(heights(3, 0, u32::MAX), vec![13, 14, 15, 16]);
    assert_eq!(heights(3, 14, 15), vec![14, 15]);
    assert_eq!(heights(3, 16, 16), vec![16]);
    assert_eq!(heights(3, 0, 12), Vec::<u32>::new());
    assert_eq!(heights(3, 15, 14), Vec::<u32>::new());
    assert_eq!(heights(1, 10, 14), vec![10, 11, 12, 13, 14]);
    assert_eq!(heights(9, 0, u32::MAX), Vec::<u32>::new());
    // Every height found has a row, and none between them was skipped.
    let owner = key(3).pubkey_hash();
    let rows = store.address_history(&owner, None, 100).unwrap();
    let mut from_rows: Vec<u32> = rows.iter().map(|(h, _, _)| *h).collect();
    from_rows.sort_unstable();
    from_rows.dedup();
    assert_eq!(from_rows, heights(3, 0, u32::MAX));
}
