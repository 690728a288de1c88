//! Orphan transactions: a child that arrives before its parent waits for
//! it, is judged once the parent is in, and costs nothing when resent.

use super::*;
use crate::consensus::amount::Amount;
use crate::consensus::transaction::{OutPoint, Transaction, TxIn, TxOut};
use crate::testkit::signed_spend;

/// A harness at a chain with a mature coinbase to key 1, and a parent that
/// spends it to key 2 with a child that spends the parent to key 3.
fn parent_and_child() -> (Harness, Transaction, Transaction) {
    let (h, _, parent, child) = parent_and_child_on();
    (h, parent, child)
}

/// As `parent_and_child`, with the test chain the harness was built from.
fn parent_and_child_on() -> (Harness, TestChain, Transaction, Transaction) {
    let mut chain = TestChain::new(Network::Regtest);
    for _ in 0..=chain.params.coinbase_maturity + 1 {
        chain.mine_empty(key(1).pubkey_hash());
    }
    let h = harness(&chain.blocks[1..]);
    let coinbase = &chain.blocks[1].transactions[0];
    let pay = |units: u64, to: u8| TxOut {
        amount: Amount::from_units(units),
        owner: key(to).pubkey_hash(),
    };
    let spent = coinbase.outputs[0];
    let parent = signed_spend(
        &[(OutPoint::new(coinbase.txid(), 0), spent, &key(1))],
        vec![pay(spent.amount.units() - 10_000, 2)],
    );
    let child = signed_spend(
        &[(OutPoint::new(parent.txid(), 0), parent.outputs[0], &key(2))],
        vec![pay(parent.outputs[0].amount.units() - 10_000, 3)],
    );
    (h, chain, parent, child)
}

fn asked_for(actions: &[Action], id: PeerId) -> Vec<Hash256> {
    items_asked(actions, id, InvKind::Tx)
}

fn in_pool(h: &Harness, txid: &Hash256) -> bool {
    h.protocol.mempool.lock().unwrap().contains(txid)
}

/// Runs the orphan work the protocol thread would, with its chain actions.
fn orphan_turn(h: &mut Harness) -> Vec<Action> {
    let actions = h.protocol.process_orphan_work(h.now);
    h.inline(actions, h.now)
}

#[test]
fn a_child_before_its_parent_waits_asks_for_the_parent_and_enters_after_it() {
    let (mut h, parent, child) = parent_and_child();
    ready_outbound(&mut h, 1);
    let actions = h.message(1, Message::Tx(Box::new(child.clone())), h.now);
    assert_eq!(disconnected(&actions, 1), None);
    assert!(h.protocol.orphans.contains(&child.txid()));
    assert!(!in_pool(&h, &child.txid()));
    assert_eq!(asked_for(&actions, 1), vec![parent.txid()]);
    assert!(!h.protocol.recent_rejects.contains(&child.txid()));
    // Announced or sent again meanwhile: neither asked for nor judged.
    let inv = Message::Inv(vec![InvItem {
        kind: InvKind::Tx,
        hash: child.txid(),
    }]);
    assert!(asked_for(&h.message(1, inv, h.now), 1).is_empty());
    // Were it judged again, its parent now refused would refuse it too.
    h.protocol
        .recent_rejects
        .insert_bounded(parent.txid(), MAX_RECENT_REJECTS);
    let actions = h.message(1, Message::Tx(Box::new(child.clone())), h.now);
    assert!(actions.is_empty(), "{actions:?}");
    assert!(h.protocol.orphans.contains(&child.txid()));
    assert!(!h.protocol.recent_rejects.contains(&child.txid()));
    assert!(!h.protocol.has_orphan_work());
    h.protocol.recent_rejects.clear();
    // The parent comes: it enters, and the child is judged on the next turn.
    h.message(1, Message::Tx(Box::new(parent.clone())), h.now);
    assert!(in_pool(&h, &parent.txid()));
    assert!(h.protocol.has_orphan_work());
    orphan_turn(&mut h);
    assert!(in_pool(&h, &child.txid()));
    assert!(!h.protocol.orphans.contains(&child.txid()));
    assert!(!h.protocol.has_orphan_work());
    assert_eq!(h.protocol.orphans.len(), 0);
}

#[test]
fn an_orphan_leaves_with_its_sender() {
    let (mut h, _parent, child) = parent_and_child();
    two_ready_peers(&mut h);
    h.message(1, Message::Tx(Box::new(child.clone())), h.now);
    assert!(h.protocol.orphans.contains(&child.txid()));
    h.protocol.on_disconnected(1, h.now);
    assert_eq!(h.protocol.orphans.len(), 0);
    assert_eq!(h.protocol.orphans.bytes(), 0);
    // Another peer's copy is kept anew, and its parent asked of that peer.
    let actions = h.message(2, Message::Tx(Box::new(child.clone())), h.now);
    assert!(h.protocol.orphans.contains(&child.txid()));
    assert_eq!(asked_for(&actions, 2).len(), 1);
}

/// An orphan whose signature fails is found out once its parent is in, and
/// its sender pays as for any invalid transaction.
#[test]
fn an_invalid_orphan_costs_its_sender_once_its_parent_is_in() {
    let (mut h, parent, mut child) = parent_and_child();
    two_ready_peers(&mut h);
    if let TxIn::Spend { signature, .. } = &mut child.inputs[0] {
        signature[5] ^= 1;
    }
    let actions = h.message(1, Message::Tx(Box::new(child.clone())), h.now);
    assert_eq!(disconnected(&actions, 1), None);
    h.message(2, Message::Tx(Box::new(parent.clone())), h.now);
    let actions = orphan_turn(&mut h);
    assert_eq!(disconnected(&actions, 1), Some("invalid_transaction"));
    assert_eq!(disconnected(&actions, 2), None);
    assert!(h.protocol.recent_rejects.contains(&child.txid()));
    assert!(!in_pool(&h, &child.txid()));
}

/// A child of a parent refused at this tip is refused at once (its parent
/// would never be asked for again), and is not kept.
#[test]
fn a_child_of_a_refused_parent_is_refused() {
    let (mut h, parent, child) = parent_and_child();
    ready_inbound(&mut h, 1);
    h.protocol.refresh_for_tip();
    h.protocol
        .recent_rejects
        .insert_bounded(parent.txid(), MAX_RECENT_REJECTS);
    let actions = h.message(1, Message::Tx(Box::new(child.clone())), h.now);
    assert!(asked_for(&actions, 1).is_empty());
    assert!(!h.protocol.orphans.contains(&child.txid()));
    assert!(h.protocol.recent_rejects.contains(&child.txid()));
}

/// An orphan of two parents, judged again when the first comes, stays kept
/// with the expiry it came with, and asks for nothing again.
#[test]
fn an_orphan_still_missing_a_parent_stays_until_the_last_one_comes() {
    let mut chain = TestChain::new(Network::Regtest);
    for _ in 0..=chain.params.coinbase_maturity + 2 {
        chain.mine_empty(key(1).pubkey_hash());
    }
    let mut h = harness(&chain.blocks[1..]);
    ready_outbound(&mut h, 1);
    let parent_of = |height: usize| {
        let coinbase = &chain.blocks[height].transactions[0];
        let spent = coinbase.outputs[0];
        signed_spend(
            &[(OutPoint::new(coinbase.txid(), 0), spent, &key(1))],
            vec![TxOut {
                amount: Amount::from_units(spent.amount.units() - 10_000),
                owner: key(2).pubkey_hash(),
            }],
        )
    };
    let (first, second) = (parent_of(1), parent_of(2));
    let child = signed_spend(
        &[
            (OutPoint::new(first.txid(), 0), first.outputs[0], &key(2)),
            (OutPoint::new(second.txid(), 0), second.outputs[0], &key(2)),
        ],
        vec![TxOut {
            amount: Amount::from_units(first.outputs[0].amount.units()),
            owner: key(3).pubkey_hash(),
        }],
    );
    let actions = h.message(1, Message::Tx(Box::new(child.clone())), h.now);
    let mut asked = asked_for(&actions, 1);
    asked.sort();
    let mut parents = vec![first.txid(), second.txid()];
    parents.sort();
    assert_eq!(asked, parents);
    h.message(1, Message::Tx(Box::new(first.clone())), h.now);
    let later = h.now + Duration::from_secs(60);
    let actions = h.protocol.process_orphan_work(later);
    let actions = h.inline(actions, later);
    assert!(asked_for(&actions, 1).is_empty(), "{actions:?}");
    assert!(h.protocol.orphans.contains(&child.txid()));
    assert!(!in_pool(&h, &child.txid()));
    // Its expiry still counts from when it came first.
    assert_eq!(
        h.protocol
            .orphans
            .expire(h.now + crate::p2p::protocol::ORPHAN_EXPIRY),
        1
    );
    assert_eq!(h.protocol.orphans.len(), 0);
}

/// A parent that enters the pool other than by relay (submitted over REST,
/// say) wakes its orphans too.
#[test]
fn a_parent_submitted_to_the_pool_wakes_its_orphan() {
    let (mut h, parent, child) = parent_and_child();
    ready_inbound(&mut h, 1);
    h.message(1, Message::Tx(Box::new(child.clone())), h.now);
    assert!(h.protocol.orphans.contains(&child.txid()));
    h.protocol
        .mempool
        .lock()
        .unwrap()
        .accept(&h.chain, parent.clone())
        .unwrap();
    assert!(!h.protocol.has_orphan_work());
    let actions = h.protocol.on_tick(h.now);
    h.inline(actions, h.now);
    assert!(h.protocol.has_orphan_work());
    orphan_turn(&mut h);
    assert!(in_pool(&h, &child.txid()));
}

/// A child the chain task found missing its parent, reported after the
/// parent entered the pool (no one is left to wake it), is judged again at
/// once.
#[test]
fn an_orphan_whose_parent_came_while_it_was_judged_is_judged_again() {
    let (mut h, parent, child) = parent_and_child();
    ready_inbound(&mut h, 1);
    h.message(1, Message::Tx(Box::new(parent.clone())), h.now);
    assert!(in_pool(&h, &parent.txid()));
    let missing = MempoolError::MissingInput(OutPoint::new(parent.txid(), 0));
    let actions =
        h.protocol
            .on_tx_processed(1, child.txid(), Err(missing), Some(child.clone()), h.now);
    assert!(asked_for(&actions, 1).is_empty(), "{actions:?}");
    assert!(h.protocol.has_orphan_work());
    orphan_turn(&mut h);
    assert!(in_pool(&h, &child.txid()));
    assert_eq!(h.protocol.orphans.len(), 0);
}

/// An orphan the tip confirms (with its parent, in a block) leaves the
/// orphanage at the next look at the tip.
#[test]
fn an_orphan_the_tip_confirms_leaves() {
    let (mut h, mut chain, parent, child) = parent_and_child_on();
    ready_inbound(&mut h, 1);
    h.message(1, Message::Tx(Box::new(child.clone())), h.now);
    assert!(h.protocol.orphans.contains(&child.txid()));
    let block = chain.build_block(key(1).pubkey_hash(), vec![parent, child.clone()]);
    chain.apply(block.clone());
    h.chain.process_block(Arc::new(block), None).unwrap();
    h.protocol.refresh_for_tip();
    assert!(!h.protocol.orphans.contains(&child.txid()));
}

/// An orphan whose missing parent comes in a block, not through the pool,
/// is judged again at the new tip and enters the pool (it waited for its
/// expiry before).
#[test]
fn an_orphan_whose_parent_a_block_confirms_is_judged_again() {
    let (mut h, mut chain, parent, child) = parent_and_child_on();
    ready_inbound(&mut h, 1);
    h.message(1, Message::Tx(Box::new(child.clone())), h.now);
    assert!(h.protocol.orphans.contains(&child.txid()));
    let block = chain.build_block(key(1).pubkey_hash(), vec![parent]);
    chain.apply(block.clone());
    h.chain.process_block(Arc::new(block), None).unwrap();
    h.protocol.refresh_for_tip();
    assert!(h.protocol.has_orphan_work());
    orphan_turn(&mut h);
    assert!(in_pool(&h, &child.txid()));
    assert!(!h.protocol.orphans.contains(&child.txid()));
}

/// Woken once for a confirmed parent: an orphan still missing that
/// parent's output (a block spent it elsewhere) waits for its expiry
/// instead of being judged again at every tip.
#[test]
fn an_orphan_woken_for_a_confirmed_parent_is_not_woken_again_for_it() {
    let (mut h, mut chain, parent, child) = parent_and_child_on();
    ready_inbound(&mut h, 1);
    h.message(1, Message::Tx(Box::new(child.clone())), h.now);
    // The parent confirmed, with its output spent by a rival of the child.
    let rival = signed_spend(
        &[(OutPoint::new(parent.txid(), 0), parent.outputs[0], &key(2))],
        vec![TxOut {
            amount: Amount::from_units(parent.outputs[0].amount.units() - 20_000),
            owner: key(4).pubkey_hash(),
        }],
    );
    let block = chain.build_block(key(1).pubkey_hash(), vec![parent, rival]);
    chain.apply(block.clone());
    h.chain.process_block(Arc::new(block), None).unwrap();
    h.protocol.refresh_for_tip();
    assert!(h.protocol.has_orphan_work());
    orphan_turn(&mut h);
    assert!(!in_pool(&h, &child.txid()));
    assert!(h.protocol.orphans.contains(&child.txid()), "still missing");
    let block = chain.build_block(key(1).pubkey_hash(), Vec::new());
    chain.apply(block.clone());
    h.chain.process_block(Arc::new(block), None).unwrap();
    h.protocol.refresh_for_tip();
    assert!(!h.protocol.has_orphan_work());
}
