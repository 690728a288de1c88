use super::*;

fn hash(n: u8) -> BlockHash {
    crate::consensus::hash::Hash256([n; 32])
}

#[test]
fn ids_round_trip_and_bad_ones_are_refused() {
    let id = EventId {
        height: 42,
        hash: hash(7),
        seq: 3,
    };
    assert_eq!(id.to_string().parse::<EventId>().unwrap(), id);
    let end = EventId::end_of(9, hash(1));
    assert!(end.to_string().ends_with(":end"));
    assert_eq!(end.to_string().parse::<EventId>().unwrap(), end);
    for bad in [
        "",
        "42",
        "42:abc:0",
        &format!("x:{}:0", hash(1)),
        &format!("1:{}:", hash(1)),
        &format!("1:{}:4294967295", hash(1)),
        &format!("1:{}:0:0", hash(1)),
        &format!("-1:{}:0", hash(1)),
    ] {
        assert!(bad.parse::<EventId>().is_err(), "{bad:?} parsed");
    }
}

/// A chain of blocks `active` (hash n at height n) and a stale branch
/// leaving it after height `fork`, as `plan` sees them.
struct Chains {
    active: Vec<BlockHash>,
    stale: Vec<(u32, BlockHash, BlockHash)>,
}

impl Chains {
    fn new(tip: u8) -> Chains {
        Chains {
            active: (0..=tip).map(hash).collect(),
            stale: Vec::new(),
        }
    }

    fn with_stale(mut self, fork: u32, len: u8) -> Chains {
        let mut parent = self.active[fork as usize];
        for i in 0..len {
            let h = hash(200 + i);
            self.stale.push((fork + 1 + u32::from(i), h, parent));
            parent = h;
        }
        self
    }

    fn plan(&self, position: EventId) -> Result<Plan, CatchUpError> {
        let tip = self.active.len() as u32 - 1;
        plan(
            position,
            tip,
            |h| Ok(self.active.get(h as usize).copied()),
            |x| {
                if let Some(h) = self.active.iter().position(|a| a == x) {
                    return Ok(Some((h as u32, self.active[h.saturating_sub(1)])));
                }
                Ok(self
                    .stale
                    .iter()
                    .find(|(_, h, _)| h == x)
                    .map(|(height, _, parent)| (*height, *parent)))
            },
        )
    }
}

#[test]
fn an_active_position_goes_forward_from_the_next_event() {
    let chains = Chains::new(10);
    let seen_all = EventId::end_of(5, hash(5));
    let plan = chains.plan(seen_all).unwrap();
    assert_eq!(plan, Plan::Forward { from: seen_all });
    assert_eq!(replay_range(&plan, 10), Some((6, 10)));
    // Part of block 5's events seen: block 5 is read again (its events
    // after seq 1 are sent).
    let partly = EventId { seq: 1, ..seen_all };
    assert_eq!(
        replay_range(&chains.plan(partly).unwrap(), 10),
        Some((5, 10))
    );
    // At the tip: nothing to send.
    let at_tip = EventId::end_of(10, hash(10));
    assert_eq!(replay_range(&chains.plan(at_tip).unwrap(), 10), None);
}

#[test]
fn a_stale_position_is_a_reorg_back_to_the_fork() {
    let chains = Chains::new(10).with_stale(6, 3);
    let old = EventId::end_of(9, hash(202));
    let plan = chains.plan(old).unwrap();
    assert_eq!(
        plan,
        Plan::Reorg {
            old,
            fork_height: 6,
            fork_hash: hash(6)
        }
    );
    assert_eq!(replay_range(&plan, 10), Some((7, 10)));
}

#[test]
fn a_view_behind_the_position_waits() {
    // The view's tip (6) is an ancestor of the position (a stale-looking
    // block above the tip on the same chain).
    let chains = Chains::new(6).with_stale(6, 2);
    let plan = chains.plan(EventId::end_of(8, hash(201))).unwrap();
    assert_eq!(plan, Plan::Wait);
    assert_eq!(replay_range(&plan, 6), None);
}

#[test]
fn unknown_blocks_and_wrong_heights_are_refused() {
    let chains = Chains::new(10);
    assert!(matches!(
        chains.plan(EventId::end_of(3, hash(99))),
        Err(CatchUpError::UnknownBlock(_))
    ));
    assert!(matches!(
        chains.plan(EventId::end_of(4, hash(3))),
        Err(CatchUpError::WrongHeight { .. })
    ));
}

#[test]
fn a_position_far_off_the_active_chain_is_refused_after_a_bounded_walk() {
    // A stale branch of 50 blocks is within the limit: back to its fork.
    let chains = Chains::new(3).with_stale(3, 50);
    let top = *chains.stale.last().unwrap();
    assert!(matches!(
        chains.plan(EventId::end_of(top.0, top.1)),
        Ok(Plan::Wait)
    ));
    // Headers far above the tip (a node in its initial sync), played as a
    // branch that never meets the active chain: the walk stops at the
    // replay limit rather than reading every entry, on every pass.
    let reads = std::cell::Cell::new(0u32);
    let far = MAX_CATCH_UP_BLOCKS * 3;
    let endless = plan(
        EventId::end_of(far, hash(250)),
        3,
        |_| {
            reads.set(reads.get() + 1);
            Ok(None)
        },
        |x| Ok(Some((far, *x))),
    );
    assert!(
        matches!(endless, Err(CatchUpError::OffTheChain { from, limit }) if from == far && limit == MAX_CATCH_UP_BLOCKS),
        "{endless:?}"
    );
    assert_eq!(reads.get(), MAX_CATCH_UP_BLOCKS + 2);
}

#[test]
fn a_pass_reads_at_most_the_pass_limit() {
    let tip = 3 * MAX_CATCH_UP_BLOCKS;
    let plan = Plan::Forward {
        from: EventId::end_of(0, hash(0)),
    };
    assert_eq!(replay_range(&plan, tip), Some((1, MAX_BLOCKS_PER_PASS)));
    assert_eq!(
        replay_range(&plan, MAX_BLOCKS_PER_PASS / 2),
        Some((1, MAX_BLOCKS_PER_PASS / 2))
    );
}

fn event(n: u32) -> StreamEvent {
    StreamEvent {
        name: "block",
        id: None,
        data: serde_json::json!(n),
    }
}

#[tokio::test]
async fn a_subscriber_whose_queue_stays_full_is_cut_off() {
    let grace = Duration::from_millis(50);
    let (outbox, mut queue) = Outbox::new(4, grace);
    for n in 0..4 {
        outbox.send(event(n)).await.unwrap();
    }
    // Full: the fifth waits out the grace, then the subscriber is cut off.
    let Err(Closed::CutOff(reason)) = outbox.send(event(4)).await else {
        panic!("not cut off");
    };
    assert!(reason.contains("4 events"), "{reason}");
    // A reader that keeps up is never cut off.
    assert_eq!(queue.recv().await, Some(event(0)));
    outbox.send(event(5)).await.unwrap();
    // A reader that left: the subscriber is gone, not cut off.
    drop(queue);
    assert_eq!(outbox.send(event(6)).await, Err(Closed::Gone));
}

#[test]
fn pool_events_reach_watched_addresses_and_respect_the_mempool_switch() {
    let watched = PubKeyHash([1; 20]);
    let other = PubKeyHash([2; 20]);
    let watch = Watch {
        network: Network::Regtest,
        addresses: [watched].into_iter().collect(),
        mempool: false,
    };
    let txid = crate::consensus::hash::Hash256([9; 32]);
    let added = PoolEvent::Added {
        txid,
        fee: 200,
        size: 190,
        owners: vec![(watched, 5_000), (other, -5_200)],
    };
    let events = pool_events(&added, &watch);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].name, "address");
    assert_eq!(events[0].data["status"], "pending");
    assert_eq!(events[0].data["change"], 5_000);
    let confirmed = PoolEvent::Removed {
        txid,
        reason: RemovalReason::Confirmed,
        owners: vec![(watched, 5_000)],
    };
    assert!(pool_events(&confirmed, &watch).is_empty());
    let evicted = PoolEvent::Removed {
        txid,
        reason: RemovalReason::Evicted,
        owners: vec![(watched, 5_000)],
    };
    let all = Watch {
        mempool: true,
        ..watch
    };
    let events = pool_events(&evicted, &all);
    assert_eq!(
        events.iter().map(|e| e.name).collect::<Vec<_>>(),
        ["mempool-remove", "address"]
    );
    assert_eq!(events[0].data["reason"], "evicted");
    assert_eq!(events[1].data["status"], "dropped");
}

#[test]
fn a_block_no_watched_address_touches_reads_as_the_whole_block_does() {
    use crate::consensus::amount::Amount;
    use crate::consensus::transaction::TxOut;
    use crate::testkit::{key, signed_spend, TestChain};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let mut chain = crate::testkit::regtest_chain(dir.path());
    let mut test = TestChain::new(Network::Regtest);
    for _ in 0..14 {
        test.mine_empty(key(1).pubkey_hash());
    }
    // Six more blocks; every other one pays key(2) (from key(1)'s coins).
    let mut paying = BTreeSet::new();
    for i in 0..6 {
        let txs = if i % 2 == 0 {
            let (outpoint, utxo) = test.spendable(key(1).pubkey_hash())[0];
            let change = utxo.output.amount.units() - 1_000_000 - 10_000;
            paying.insert(test.height() + 1);
            vec![signed_spend(
                &[(outpoint, utxo.output, &key(1))],
                vec![
                    TxOut {
                        amount: Amount::from_units(1_000_000),
                        owner: key(2).pubkey_hash(),
                    },
                    TxOut {
                        amount: Amount::from_units(change),
                        owner: key(1).pubkey_hash(),
                    },
                ],
            )]
        } else {
            Vec::new()
        };
        let block = test.build_block(key(3).pubkey_hash(), txs);
        test.apply(block);
    }
    for block in &test.blocks[1..] {
        chain.process_block(Arc::new(block.clone()), None).unwrap();
    }
    let view = chain.reader().view().unwrap();
    let tip = view.height();
    let watched: BTreeSet<PubKeyHash> = [key(2).pubkey_hash(), key(7).pubkey_hash()].into();
    let touched = steps::touched_heights(&view, &watched, 1, tip).unwrap();
    assert_eq!(touched, paying);
    let miner: BTreeSet<PubKeyHash> = [key(3).pubkey_hash()].into();
    assert_eq!(
        steps::touched_heights(&view, &miner, 1, tip).unwrap(),
        (15..=tip).collect()
    );
    // Every step, read whole or from the index entry alone, is the same.
    let none = BTreeSet::new();
    for height in 1..=tip {
        let whole = steps::read_step(&view, height, &watched).unwrap();
        let chosen = if touched.contains(&height) {
            &watched
        } else {
            &none
        };
        assert_eq!(steps::read_step(&view, height, chosen).unwrap(), whole);
        assert_eq!(whole.changes.is_empty(), !touched.contains(&height));
    }
}

/// A replay from an old position on a real chain: it reads the blocks that
/// touch the watched address; abandoned, it stops before reading any.
#[test]
fn an_abandoned_replay_stops_before_its_next_block() {
    use crate::testkit::{key, TestChain};
    let dir = tempfile::tempdir().unwrap();
    let mut chain = crate::testkit::regtest_chain(dir.path());
    let mut test = TestChain::new(Network::Regtest);
    let miner = key(4).pubkey_hash();
    for _ in 0..30 {
        let block = test.mine_empty(miner).clone();
        chain
            .process_block(std::sync::Arc::new(block), None)
            .unwrap();
    }
    let view = chain.reader().view().unwrap();
    let watch = Watch {
        network: Network::Regtest,
        addresses: [miner].into_iter().collect(),
        mempool: false,
    };
    let from = EventId::end_of(1, test.blocks[1].hash());
    let pass = catch_up(&view, &watch, from, None, &AtomicBool::new(false)).unwrap();
    assert!(!pass.events.is_empty());
    assert!(matches!(
        catch_up(&view, &watch, from, None, &AtomicBool::new(true)),
        Err(CatchUpError::Abandoned)
    ));
}
