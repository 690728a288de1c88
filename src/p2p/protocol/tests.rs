//! The protocol's rules, driven without sockets.

use super::*;
use crate::chain::flush::CATCH_UP_DISTANCE;
use crate::testkit::{key, TestChain};

struct Harness {
    protocol: Protocol,
    /// The chain the protocol's chain actions run on, inline (the chain
    /// task's part).
    chain: crate::chain::Chain,
    _dir: tempfile::TempDir,
    now: Instant,
}

impl Harness {
    /// A message from peer `id`, with the chain actions it leads to run at
    /// once: what is left to send, connect or disconnect.
    fn message(&mut self, id: PeerId, message: Message, now: Instant) -> Vec<Action> {
        let actions = self.protocol.on_message(id, message, now);
        self.protocol.process_inline(&mut self.chain, actions, now)
    }

    fn inline(&mut self, actions: Vec<Action>, now: Instant) -> Vec<Action> {
        self.protocol.process_inline(&mut self.chain, actions, now)
    }
}

fn harness(blocks: &[crate::consensus::block::Block]) -> Harness {
    harness_with(blocks, crate::chain::ChainOptions::default())
}

fn harness_with(
    blocks: &[crate::consensus::block::Block],
    options: crate::chain::ChainOptions,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut chain = crate::chain::Chain::open(
        dir.path(),
        Network::Regtest,
        crate::chain::ChainOptions {
            sync_writes: false,
            ..options
        },
    )
    .unwrap();
    for block in blocks {
        chain.process_block(Arc::new(block.clone()), None).unwrap();
    }
    let now = Instant::now();
    let mempool = Arc::new(Mutex::new(crate::mempool::Mempool::new(
        &chain,
        crate::mempool::DEFAULT_MAX_MEMPOOL_BYTES,
    )));
    let protocol = Protocol::new(
        chain.reader(),
        mempool,
        Network::Regtest,
        27333,
        AddrBook::new(Network::Regtest),
        Vec::new(),
        false,
        now,
    );
    Harness {
        protocol,
        chain,
        _dir: dir,
        now,
    }
}

fn their_version(nonce: u64, height: u32) -> Message {
    Message::Version(Version {
        protocol_version: PROTOCOL_VERSION,
        services: SERVICE_NETWORK,
        timestamp: 0,
        start_height: height,
        nonce,
        listen_port: 0,
        user_agent: "/test/".into(),
    })
}

fn sent(actions: &[Action], id: PeerId) -> Vec<&'static str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(to, m) if *to == id => Some(m.command()),
            _ => None,
        })
        .collect()
}

fn disconnected(actions: &[Action], id: PeerId) -> Option<&'static str> {
    actions.iter().find_map(|a| match a {
        Action::Disconnect(to, reason) if *to == id => Some(*reason),
        _ => None,
    })
}

/// A peer we dialed that completed the handshake: its transaction
/// announcements are asked for at once (an inbound peer's wait
/// `INBOUND_TX_REQUEST_DELAY`).
fn ready_outbound(h: &mut Harness, id: PeerId) {
    outbound_ready(h, id, loopback(40_000 + id as u16));
}

/// An inbound peer that completed the handshake.
fn ready_inbound(h: &mut Harness, id: PeerId) {
    ready_inbound_at(h, id, 40_000);
}

/// An inbound peer from `127.0.0.1:port` that completed the handshake.
fn ready_inbound_at(h: &mut Harness, id: PeerId, port: u16) {
    let addr = loopback(port);
    assert!(h.protocol.on_connected(id, addr, None, h.now).is_empty());
    let actions = h.message(id, their_version(id, 0), h.now);
    assert_eq!(sent(&actions, id), vec!["version", "verack"]);
    let actions = h.message(id, Message::Verack, h.now);
    assert_eq!(
        sent(&actions, id),
        vec!["sendheaders", "getheaders", "mempool"]
    );
}

#[test]
fn inbound_handshake_answers_version_then_starts_header_sync() {
    let mut h = harness(&[]);
    ready_inbound(&mut h, 1);
    assert!(h.protocol.peer_summaries()[0].ready);
}

#[test]
fn messages_before_the_handshake_are_a_violation() {
    let mut h = harness(&[]);
    h.protocol
        .on_connected(1, "127.0.0.1:40000".parse().unwrap(), None, h.now);
    let actions = h.message(1, Message::Ping(1), h.now);
    assert_eq!(disconnected(&actions, 1), Some("message_before_handshake"));
    assert_eq!(
        h.protocol.counters().misbehaviour["message_before_handshake"],
        1
    );
    // Loopback peers are disconnected but not discouraged.
    assert!(!h
        .protocol
        .is_discouraged(&"127.0.0.1".parse().unwrap(), h.now));
}

#[test]
fn remote_misbehaviour_discourages_the_address() {
    let mut h = harness(&[]);
    h.protocol
        .on_connected(1, "192.0.2.7:40000".parse().unwrap(), None, h.now);
    h.protocol.on_violation(1, "bad_checksum");
    assert!(h
        .protocol
        .is_discouraged(&"192.0.2.7".parse().unwrap(), Instant::now()));
    // A new inbound connection from there is refused at once.
    let actions =
        h.protocol
            .on_connected(2, "192.0.2.7:40001".parse().unwrap(), None, Instant::now());
    assert_eq!(disconnected(&actions, 2), Some("discouraged"));
}

#[test]
fn duplicate_version_and_self_connection_are_refused() {
    let mut h = harness(&[]);
    ready_inbound(&mut h, 1);
    let actions = h.message(1, their_version(5, 0), h.now);
    assert_eq!(disconnected(&actions, 1), Some("duplicate_version"));

    // Dial out, then receive our own nonce on an inbound connection.
    let ours = h.protocol.on_connected(
        2,
        "127.0.0.1:27333".parse().unwrap(),
        Some("127.0.0.1:27333".parse().unwrap()),
        h.now,
    );
    let Action::Send(_, Message::Version(v)) = &ours[0] else {
        panic!("{ours:?}")
    };
    h.protocol
        .on_connected(3, "127.0.0.1:50000".parse().unwrap(), None, h.now);
    let actions = h.message(3, their_version(v.nonce, 0), h.now);
    assert_eq!(disconnected(&actions, 3), Some("self_connection"));
}

#[test]
fn handshake_timeout_drops_silent_peers() {
    let mut h = harness(&[]);
    h.protocol
        .on_connected(1, "127.0.0.1:40000".parse().unwrap(), None, h.now);
    let actions = h
        .protocol
        .on_tick(h.now + HANDSHAKE_TIMEOUT + Duration::from_secs(1));
    assert_eq!(disconnected(&actions, 1), Some("handshake_timeout"));
}

#[test]
fn getheaders_is_answered_from_the_locator_and_blocks_are_served() {
    let mut chain = TestChain::new(Network::Regtest);
    for _ in 0..5 {
        chain.mine_empty(key(1).pubkey_hash());
    }
    let mut h = harness(&chain.blocks[1..]);
    ready_inbound(&mut h, 1);
    let request = Message::GetHeaders(GetHeaders {
        locator: vec![chain.blocks[2].hash()],
        stop: Hash256::ZERO,
    });
    let actions = h.message(1, request, h.now);
    let Some(Action::Send(_, Message::Headers(headers))) = actions.first() else {
        panic!("{actions:?}")
    };
    assert_eq!(
        headers.iter().map(|h| h.hash()).collect::<Vec<_>>(),
        chain.blocks[3..]
            .iter()
            .map(|b| b.hash())
            .collect::<Vec<_>>()
    );

    let wanted = vec![
        InvItem {
            kind: InvKind::Block,
            hash: chain.blocks[4].hash(),
        },
        InvItem {
            kind: InvKind::Block,
            hash: Hash256([9; 32]),
        },
    ];
    let actions = h.message(1, Message::GetData(wanted), h.now);
    assert!(sent(&actions, 1).is_empty(), "served as the socket drains");
    let actions = h.protocol.serve_getdata(1, 1 << 20);
    assert_eq!(sent(&actions, 1), vec!["block", "notfound"]);
}

#[test]
fn headers_from_a_peer_lead_to_block_requests_and_invalid_headers_to_disconnect() {
    let mut chain = TestChain::new(Network::Regtest);
    for _ in 0..3 {
        chain.mine_empty(key(1).pubkey_hash());
    }
    let mut h = harness(&[]);
    ready_inbound(&mut h, 1);
    let headers: Vec<_> = chain.blocks[1..].iter().map(|b| b.header).collect();
    let actions = h.message(1, Message::Headers(headers.clone()), h.now);
    let requested: Vec<Hash256> = actions
        .iter()
        .flat_map(|a| match a {
            Action::Send(1, Message::GetData(items)) => items.iter().map(|i| i.hash).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(
        requested,
        chain.blocks[1..]
            .iter()
            .map(|b| b.hash())
            .collect::<Vec<_>>()
    );

    // A header with a bad proof of work is a violation.
    let mut bad = headers[2];
    bad.nonce = bad.nonce.wrapping_add(1);
    while crate::consensus::validation::check_header(&bad, Network::Regtest.params()).is_ok() {
        bad.nonce = bad.nonce.wrapping_add(1);
    }
    let actions = h.message(1, Message::Headers(vec![bad]), h.now);
    assert_eq!(disconnected(&actions, 1), Some("invalid_header"));
}

/// Headers wait for the chain task to index them: meanwhile the tick asks
/// no peer for headers (however long it takes), and a sender that leaves
/// before its headers are found invalid is still discouraged.
#[test]
fn headers_being_indexed_hold_back_the_tick_and_still_cost_a_sender_that_left() {
    let mut chain = TestChain::new(Network::Regtest);
    chain.mine_empty(key(1).pubkey_hash());
    let mut h = harness(&[]);
    let remote: std::net::SocketAddr = "203.0.113.7:8333".parse().unwrap();
    h.protocol.on_connected(1, remote, None, h.now);
    h.message(1, their_version(1, 5), h.now);
    h.message(1, Message::Verack, h.now);
    ready_inbound(&mut h, 2);
    // Its proof of work holds (checked on arrival); its time, before its
    // parent's, is found wrong only when indexed.
    let mut bad = chain.blocks[1].header;
    bad.time = 0;
    while crate::consensus::validation::check_header(&bad, Network::Regtest.params()).is_err() {
        bad.nonce = bad.nonce.wrapping_add(1);
    }
    // Not run yet: the chain task is busy.
    let queued = h.protocol.on_message(1, Message::Headers(vec![bad]), h.now);
    assert!(queued
        .iter()
        .any(|a| matches!(a, Action::ProcessHeaders { peer: 1, .. })));
    for later in [Duration::from_secs(1), HEADERS_RESPONSE_TIMEOUT * 2] {
        let tick = h.protocol.on_tick(h.now + later);
        assert!(
            getheaders_locator(&tick, 1).is_none() && getheaders_locator(&tick, 2).is_none(),
            "a second headers request while the first answer is indexed: {tick:?}"
        );
    }
    h.protocol.on_disconnected(1, h.now);
    assert!(!h.protocol.is_discouraged(&remote.ip(), h.now));
    h.inline(queued, h.now);
    assert!(
        h.protocol.is_discouraged(&remote.ip(), h.now),
        "a sender gone before its headers were indexed escapes"
    );
    assert_eq!(h.protocol.counters().misbehaviour["invalid_header"], 1);
    assert!(h.protocol.awaiting.is_empty());
}

/// A block waits for the chain task to judge it: a sender that leaves
/// before its block is found invalid is still discouraged.
#[test]
fn an_invalid_block_still_costs_a_sender_that_left_before_it_was_judged() {
    let mut chain = TestChain::new(Network::Regtest);
    let mut block = chain.mine_empty(key(1).pubkey_hash()).clone();
    // The header (and its work) stays valid; the body no longer matches it.
    block.transactions[0].outputs[0].amount = crate::consensus::amount::Amount::from_units(1);
    let mut h = harness(&[]);
    let remote: std::net::SocketAddr = "203.0.113.9:8333".parse().unwrap();
    h.protocol.on_connected(1, remote, None, h.now);
    h.message(1, their_version(1, 1), h.now);
    h.message(1, Message::Verack, h.now);
    let queued = h
        .protocol
        .on_message(1, Message::Block(Box::new(block)), h.now);
    assert!(queued
        .iter()
        .any(|a| matches!(a, Action::ProcessBlock { peer: 1, .. })));
    h.protocol.on_disconnected(1, h.now);
    h.inline(queued, h.now);
    assert!(
        h.protocol.is_discouraged(&remote.ip(), h.now),
        "a sender gone before its block was judged escapes"
    );
    assert_eq!(h.protocol.counters().misbehaviour["invalid_block"], 1);
    assert!(h.protocol.processing.is_empty());
    assert!(h.protocol.awaiting.is_empty());
}

/// While the node catches up (its best header far above its tip), it
/// neither asks for announced transactions nor judges relayed ones; at the
/// tip it asks.
#[test]
fn transactions_wait_until_the_node_has_caught_up() {
    let mut chain = TestChain::new(Network::Regtest);
    for _ in 0..(CATCH_UP_DISTANCE + 4) {
        chain.mine_empty(key(1).pubkey_hash());
    }
    let spend = crate::testkit::signed_spend(
        &[(
            crate::consensus::transaction::OutPoint {
                txid: chain.blocks[1].transactions[0].txid(),
                vout: 0,
            },
            chain.blocks[1].transactions[0].outputs[0],
            &key(1),
        )],
        vec![],
    );
    let announce = || {
        Message::Inv(vec![InvItem {
            kind: InvKind::Tx,
            hash: spend.txid(),
        }])
    };
    let asked_for_tx = |actions: &[Action]| {
        actions.iter().any(|a| {
            matches!(a, Action::Send(1, Message::GetData(items))
                if items.iter().any(|i| i.kind == InvKind::Tx))
        })
    };
    // At the tip: asked for.
    let mut h = harness(&[]);
    ready_outbound(&mut h, 1);
    assert!(asked_for_tx(&h.message(1, announce(), h.now)));

    // Behind the headers: neither asked for nor judged.
    let mut h = harness(&[]);
    ready_outbound(&mut h, 1);
    let headers: Vec<_> = chain.blocks[1..].iter().map(|b| b.header).collect();
    h.message(1, Message::Headers(headers), h.now);
    assert!(h.protocol.catching_up());
    assert!(!asked_for_tx(&h.message(1, announce(), h.now)));
    // A transaction any judge would refuse (it pays nothing) is not
    // judged: not refused, not sent to the chain task.
    let actions = h
        .protocol
        .on_message(1, Message::Tx(Box::new(spend.clone())), h.now);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::AcceptTx { .. })),
        "a transaction went to the chain task during a catch-up"
    );
    assert!(!h.protocol.recent_rejects.contains(&spend.txid()));
    assert_eq!(disconnected(&actions, 1), None);
}

#[test]
fn stalled_block_requests_go_to_another_peer() {
    let mut chain = TestChain::new(Network::Regtest);
    chain.mine_empty(key(1).pubkey_hash());
    let mut h = harness(&[]);
    ready_inbound(&mut h, 1);
    let headers: Vec<_> = chain.blocks[1..].iter().map(|b| b.header).collect();
    let actions = h.message(1, Message::Headers(headers.clone()), h.now);
    assert!(sent(&actions, 1).contains(&"getdata"));
    // A second peer that also has the block.
    let addr = "127.0.0.1:40001".parse().unwrap();
    h.protocol.on_connected(2, addr, None, h.now);
    h.message(2, their_version(2, 1), h.now);
    h.message(2, Message::Verack, h.now);
    h.message(2, Message::Headers(headers), h.now);
    let later = h.now + BLOCK_STALL_TIMEOUT + Duration::from_secs(1);
    let actions = h.protocol.on_tick(later);
    assert!(sent(&actions, 2).contains(&"getdata"), "{actions:?}");
}

/// Items of `kind` asked of `id` in `actions`.
fn items_asked(actions: &[Action], id: PeerId, kind: InvKind) -> Vec<Hash256> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(to, Message::GetData(items)) if *to == id => Some(items),
            _ => None,
        })
        .flatten()
        .filter(|i| i.kind == kind)
        .map(|i| i.hash)
        .collect()
}

/// Blocks asked of `id` in `actions`.
fn blocks_asked(actions: &[Action], id: PeerId) -> Vec<BlockHash> {
    items_asked(actions, id, InvKind::Block)
}

/// Peer 1 is asked for the first blocks of a catch-up and sends nothing;
/// peer 2 delivers everything else it is asked for, until the download
/// window is full and it sits idle. Returns the harness and block 1.
fn window_held_by_peer_1() -> (Harness, BlockHash) {
    let (h, blocks, _) = window_held_by_peer_1_with(false);
    (h, blocks[1].hash())
}

/// As `window_held_by_peer_1`, returning the whole chain's blocks; with
/// `last_unprocessed`, peer 2's last block is left for the chain task (its
/// actions returned, not run).
fn window_held_by_peer_1_with(
    last_unprocessed: bool,
) -> (Harness, Vec<crate::consensus::block::Block>, Vec<Action>) {
    let mut chain = TestChain::new(Network::Regtest);
    for _ in 0..(BLOCK_DOWNLOAD_WINDOW + 20) {
        chain.mine_empty(key(1).pubkey_hash());
    }
    let headers: Vec<_> = chain.blocks[1..].iter().map(|b| b.header).collect();
    let by_hash: HashMap<BlockHash, &crate::consensus::block::Block> =
        chain.blocks.iter().map(|b| (b.hash(), b)).collect();
    let mut h = harness(&[]);
    ready_inbound(&mut h, 1);
    let actions = h.message(1, Message::Headers(headers.clone()), h.now);
    let held = blocks_asked(&actions, 1);
    assert_eq!(held.len(), MAX_BLOCKS_IN_FLIGHT_PER_PEER);
    assert_eq!(held[0], chain.blocks[1].hash());
    let addr = "127.0.0.1:40001".parse().unwrap();
    h.protocol.on_connected(2, addr, None, h.now);
    h.message(2, their_version(2, 1), h.now);
    h.message(2, Message::Verack, h.now);
    let mut asked = blocks_asked(&h.message(2, Message::Headers(headers), h.now), 2);
    let mut delivered = 0;
    let expected = BLOCK_DOWNLOAD_WINDOW as usize - MAX_BLOCKS_IN_FLIGHT_PER_PEER;
    let mut unprocessed = Vec::new();
    while let Some(hash) = asked.pop() {
        let block = Message::Block(Box::new(by_hash[&hash].clone()));
        if last_unprocessed && delivered + 1 == expected {
            unprocessed = h.protocol.on_message(2, block, h.now);
            delivered += 1;
            continue;
        }
        let actions = h.message(2, block, h.now);
        assert_eq!(disconnected(&actions, 2), None);
        asked.extend(blocks_asked(&actions, 2));
        delivered += 1;
    }
    // Everything in the window but peer 1's blocks.
    assert_eq!(delivered, expected);
    assert_eq!(h.chain.tip().height, 0);
    (h, chain.blocks, unprocessed)
}

/// Ticks every 250 ms (the protocol thread's pace) from `h.now` until
/// peer 1 is disconnected; `meanwhile` runs before each tick. Returns when
/// and why, or `None` by `BLOCK_STALL_TIMEOUT`.
fn tick_until_peer_1_leaves(
    h: &mut Harness,
    mut meanwhile: impl FnMut(&mut Harness, Duration),
) -> Option<(Duration, &'static str)> {
    let mut after = Duration::ZERO;
    while after < BLOCK_STALL_TIMEOUT {
        after += Duration::from_millis(250);
        meanwhile(h, after);
        let actions = h.protocol.on_tick(h.now + after);
        assert_eq!(disconnected(&actions, 2), None);
        if let Some(reason) = disconnected(&actions, 1) {
            return Some((after, reason));
        }
    }
    None
}

/// A peer that holds back the download window (its block is the lowest
/// missing one while another peer sits idle) is disconnected once it has
/// done so for `BLOCK_STALLING_TIMEOUT`, well before its requests would
/// time out, and the next holder gets twice as long.
#[test]
fn a_peer_holding_back_the_download_window_is_disconnected() {
    let (mut h, _) = window_held_by_peer_1();
    let (after, reason) = tick_until_peer_1_leaves(&mut h, |_, _| {}).expect("dropped");
    assert_eq!(reason, "stalling_window");
    assert!(
        after > BLOCK_STALLING_TIMEOUT
            && after <= BLOCK_STALLING_TIMEOUT + Duration::from_millis(500),
        "dropped after {after:?}"
    );
    assert_eq!(
        h.protocol.block_stalling_timeout,
        BLOCK_STALLING_TIMEOUT * 2
    );
}

/// Once the holder is gone, its blocks are asked of the other peer, the
/// chain connects the whole window, and the allowance the drop doubled
/// comes back down to `BLOCK_STALLING_TIMEOUT`.
#[test]
fn after_a_holder_is_dropped_the_window_moves_and_the_allowance_decays() {
    let (mut h, blocks, _) = window_held_by_peer_1_with(false);
    let (after, _) = tick_until_peer_1_leaves(&mut h, |_, _| {}).expect("dropped");
    assert_eq!(
        h.protocol.block_stalling_timeout,
        BLOCK_STALLING_TIMEOUT * 2
    );
    let now = h.now + after;
    let by_hash: HashMap<BlockHash, &crate::consensus::block::Block> =
        blocks.iter().map(|b| (b.hash(), b)).collect();
    let mut asked = blocks_asked(&h.protocol.on_disconnected(1, now), 2);
    asked.extend(blocks_asked(&h.protocol.on_tick(now), 2));
    assert!(asked.contains(&blocks[1].hash()), "block 1 asked of peer 2");
    while let Some(hash) = asked.pop() {
        let block = Message::Block(Box::new(by_hash[&hash].clone()));
        asked.extend(blocks_asked(&h.message(2, block, now), 2));
    }
    // The whole window connected (the blocks past it are asked later).
    assert!(h.chain.tip().height >= BLOCK_DOWNLOAD_WINDOW);
    h.protocol.on_tick(now + Duration::from_millis(250));
    assert_eq!(h.protocol.block_stalling_timeout, BLOCK_STALLING_TIMEOUT);
}

/// Delivering its other blocks does not buy the holder time: only the
/// block the window waits for counts (review finding).
#[test]
fn a_holder_delivering_other_blocks_is_still_disconnected() {
    let (mut h, blocks, _) = window_held_by_peer_1_with(false);
    let first = blocks[1].hash();
    let mut others: Vec<crate::consensus::block::Block> = blocks
        .iter()
        .filter(|b| b.hash() != first && h.protocol.peers[&1].in_flight.contains_key(&b.hash()))
        .cloned()
        .collect();
    assert_eq!(others.len(), MAX_BLOCKS_IN_FLIGHT_PER_PEER - 1);
    let (after, reason) = tick_until_peer_1_leaves(&mut h, |h, after| {
        if after.as_millis() % 500 == 0 {
            if let Some(block) = others.pop() {
                // Arrived, then handed to the chain task and stored there.
                h.protocol.on_block_arrived(1, block.hash());
                let at = h.now + after;
                h.message(1, Message::Block(Box::new(block)), at);
            }
        }
    })
    .expect("dropped");
    assert_eq!(reason, "stalling_window");
    assert!(after <= BLOCK_STALLING_TIMEOUT + Duration::from_millis(500));
}

/// While the chain task has a block to work on, the holder's clock
/// pauses: a node busy connecting may leave frames unread, and blames
/// nobody for it.
#[test]
fn the_window_clock_pauses_while_the_chain_task_has_a_block() {
    let (mut h, _, pending) = window_held_by_peer_1_with(true);
    assert!(!pending.is_empty());
    assert_eq!(h.protocol.processing.len(), 1);
    let left = tick_until_peer_1_leaves(&mut h, |_, _| {});
    assert_eq!(left, None, "dropped while the chain task had a block");
}

/// An unrequested block waiting for the chain task pauses nothing: anyone
/// can send one again and again (review finding).
#[test]
fn an_unrequested_block_waiting_for_the_chain_task_pauses_nothing() {
    let (mut h, _) = window_held_by_peer_1();
    h.protocol.processing.insert(Hash256([0xb6; 32]), 2);
    let (after, reason) = tick_until_peer_1_leaves(&mut h, |_, _| {}).expect("dropped");
    assert_eq!(reason, "stalling_window");
    assert!(after <= BLOCK_STALLING_TIMEOUT + Duration::from_millis(500));
}

/// The clock pauses rather than restarts: a second of holding, a second
/// of the chain task working on a requested block, then the holder is
/// dropped once another second has passed (and the time up to the pause
/// counts: review finding).
#[test]
fn the_window_clock_resumes_where_it_paused() {
    let (mut h, _) = window_held_by_peer_1();
    let busy = Hash256([0xb5; 32]);
    let (after, reason) = tick_until_peer_1_leaves(&mut h, |h, after| {
        if after == Duration::from_secs(1) {
            h.protocol.processing_requested.insert(busy);
        } else if after == Duration::from_secs(2) {
            h.protocol.processing_requested.remove(&busy);
        }
    })
    .expect("dropped");
    assert_eq!(reason, "stalling_window");
    let running = after - Duration::from_secs(1);
    assert!(
        running > BLOCK_STALLING_TIMEOUT
            && running <= BLOCK_STALLING_TIMEOUT + Duration::from_millis(500),
        "dropped after {after:?}, {running:?} of it holding"
    );
}

/// The window's block has arrived from its holder (it waits for its turn
/// in our queue): not a stall, however long the window stays full.
#[test]
fn a_window_block_that_arrived_is_not_held_back() {
    let (mut h, first) = window_held_by_peer_1();
    h.protocol.on_block_arrived(1, first);
    // Ticks past the allowance, before the requests' own timeout.
    for step in 1..=4 {
        let at = h.now + Duration::from_secs(step);
        assert!(at < h.now + BLOCK_STALL_TIMEOUT);
        let actions = h.protocol.on_tick(at);
        assert_eq!(disconnected(&actions, 1), None, "at step {step}");
    }
}

fn index_len(h: &Harness) -> usize {
    h.chain.index_len()
}

fn getheaders_locator(actions: &[Action], id: PeerId) -> Option<Vec<BlockHash>> {
    actions.iter().find_map(|a| match a {
        Action::Send(to, Message::GetHeaders(g)) if *to == id => Some(g.locator.clone()),
        _ => None,
    })
}

/// Options that require the work of `headers` regtest headers past genesis.
fn requiring_work_of(headers: u64) -> crate::chain::ChainOptions {
    let per_header = work_from_compact(Network::Regtest.params().pow_limit_bits);
    crate::chain::ChainOptions {
        minimum_chain_work: Some(per_header * primitive_types::U256::from(headers + 1)),
        ..crate::chain::ChainOptions::default()
    }
}

fn regtest_headers(count: usize, branch: u8) -> Vec<crate::consensus::block::BlockHeader> {
    let genesis = Network::Regtest.params().genesis_block();
    crate::testkit::header_chain(genesis.hash(), genesis.header.time, count, 10, branch)
}

#[test]
fn a_long_low_work_header_chain_costs_no_index_and_bounded_memory() {
    let mut h = harness_with(&[], requiring_work_of(1_000_000));
    ready_inbound(&mut h, 1);
    let headers = regtest_headers(40_000, 1);
    let mut peak = 0;
    for batch in headers.chunks(MAX_HEADERS) {
        let actions = h.message(1, Message::Headers(batch.to_vec()), h.now);
        assert_eq!(disconnected(&actions, 1), None);
        assert_eq!(
            getheaders_locator(&actions, 1),
            Some(vec![batch.last().unwrap().hash()]),
            "the pre-sync asks for the next batch"
        );
        peak = peak.max(h.protocol.headers_sync_bytes());
    }
    assert_eq!(index_len(&h), 1, "only genesis is indexed");
    assert!(
        peak > 0 && peak < 4_096,
        "pre-sync memory peaked at {peak} bytes"
    );
    // The chain ends: the pre-sync is dropped without blaming the peer.
    let short = crate::testkit::header_chain(
        headers.last().unwrap().hash(),
        headers.last().unwrap().time,
        10,
        10,
        1,
    );
    let actions = h.message(1, Message::Headers(short), h.now);
    assert_eq!(disconnected(&actions, 1), None);
    assert_eq!(h.protocol.headers_sync_bytes(), 0);
    assert_eq!(index_len(&h), 1);
    assert!(h.protocol.counters().misbehaviour.is_empty());
}

/// A forged target (`bits` of 1) claims 2^255 of work for nothing. A batch
/// of cheap real headers ending in one, behind a header too new to index
/// yet (which would stop the indexing before the forged one is looked at),
/// must not pass for a chain with enough work: its sender is a violator
/// and nothing is indexed.
#[test]
fn a_forged_target_claims_no_work_for_the_headers_before_it() {
    let mut h = harness_with(&[], requiring_work_of(1_000_000));
    let remote: std::net::SocketAddr = "203.0.113.9:8333".parse().unwrap();
    h.protocol.on_connected(1, remote, None, h.now);
    h.message(1, their_version(1, 5), h.now);
    h.message(1, Message::Verack, h.now);
    let mut headers = regtest_headers(100, 3);
    let last = *headers.last().unwrap();
    let too_new = crate::testkit::header_chain(last.hash(), unix_now() + 86_400, 1, 10, 3)[0];
    headers.push(too_new);
    headers.push(crate::consensus::block::BlockHeader {
        prev_hash: too_new.hash(),
        time: too_new.time + 1,
        bits: 0x0300_0001,
        ..too_new
    });
    let actions = h.message(1, Message::Headers(headers), h.now);
    assert_eq!(disconnected(&actions, 1), Some("invalid_header"));
    assert_eq!(index_len(&h), 1, "only genesis is indexed");
    assert!(h.protocol.is_discouraged(&remote.ip(), h.now));
}

#[test]
fn a_chain_with_enough_work_is_indexed_after_its_presync() {
    let mut h = harness_with(&[], requiring_work_of(3_000));
    ready_inbound(&mut h, 1);
    let headers = regtest_headers(4_000, 2);
    let genesis = Network::Regtest.params().genesis_hash();
    let batches: Vec<_> = headers.chunks(MAX_HEADERS).collect();
    let actions = h.message(1, Message::Headers(batches[0].to_vec()), h.now);
    assert_eq!(
        getheaders_locator(&actions, 1),
        Some(vec![batches[0][1_999].hash()])
    );
    let actions = h.message(1, Message::Headers(batches[1].to_vec()), h.now);
    assert_eq!(
        getheaders_locator(&actions, 1),
        Some(vec![genesis]),
        "redownload"
    );
    assert_eq!(index_len(&h), 1);
    // The same chain again: checked against the commitments and indexed.
    h.message(1, Message::Headers(batches[0].to_vec()), h.now);
    let actions = h.message(1, Message::Headers(batches[1].to_vec()), h.now);
    assert_eq!(index_len(&h), 4_001);
    assert_eq!(h.protocol.headers_sync_bytes(), 0);
    assert!(
        sent(&actions, 1).contains(&"getdata"),
        "blocks are requested"
    );
}

/// A pre-sync's redownload indexes what passed while it asks for the
/// next batch: once indexed, that request stays open, so the tick sends no
/// plain `getheaders` (whose answer would restart the pre-sync).
#[test]
fn indexing_during_a_redownload_keeps_the_next_request_open() {
    let mut h = harness_with(&[], requiring_work_of(17_000));
    ready_inbound(&mut h, 1);
    let headers = regtest_headers(18_000, 4);
    let batches: Vec<_> = headers.chunks(MAX_HEADERS).collect();
    for batch in &batches {
        h.message(1, Message::Headers(batch.to_vec()), h.now);
    }
    assert_eq!(index_len(&h), 1, "first pass: nothing indexed");
    let mut checked = 0;
    for batch in &batches {
        let actions = h.message(1, Message::Headers(batch.to_vec()), h.now);
        if index_len(&h) > 1 && h.protocol.headers_sync_bytes() > 0 {
            assert!(getheaders_locator(&actions, 1).is_some());
            assert!(h.protocol.headers_request.is_some_and(|(p, _)| p == 1));
            let tick = h.protocol.on_tick(h.now + Duration::from_secs(1));
            assert!(getheaders_locator(&tick, 1).is_none(), "{tick:?}");
            checked += 1;
        }
    }
    assert!(
        checked > 0,
        "no batch was indexed while the redownload went on"
    );
    assert_eq!(index_len(&h), 18_001);
}

#[test]
fn a_header_too_far_ahead_is_retried_later_and_its_sender_stays() {
    let mut h = harness(&[]);
    ready_inbound(&mut h, 1);
    let params = Network::Regtest.params();
    let genesis = params.genesis_block();
    let too_new = unix_now() + params.max_future_block_time_secs + 100;
    let header = crate::testkit::header_chain(genesis.hash(), too_new - 10, 1, 10, 3)[0];
    let actions = h.message(1, Message::Headers(vec![header]), h.now);
    assert_eq!(disconnected(&actions, 1), None);
    assert!(h.protocol.counters().misbehaviour.is_empty());
    assert_eq!(index_len(&h), 1, "nothing cached against the header");
    let actions = h
        .protocol
        .on_tick(h.now + TIME_TOO_NEW_RETRY + Duration::from_secs(1));
    assert!(getheaders_locator(&actions, 1).is_some(), "{actions:?}");
}

#[test]
fn an_unrequested_low_work_block_is_dropped_without_blame() {
    let mut chain = TestChain::new(Network::Regtest);
    for _ in 0..20 {
        chain.mine_empty(key(1).pubkey_hash());
    }
    let mut h = harness(&chain.blocks[1..]);
    ready_inbound(&mut h, 1);
    let mut fork = TestChain::new(Network::Regtest);
    let block = fork.mine_empty(key(2).pubkey_hash()).clone();
    // Dropped by the protocol from its header alone, unjudged: neither the
    // chain task's time nor, meanwhile, the block's memory. A body that
    // does not match the header is not looked at either, nor blamed.
    let mut broken = block.clone();
    broken.transactions.clear();
    for sent in [block.clone(), broken, block.clone()] {
        let actions = h
            .protocol
            .on_message(1, Message::Block(Box::new(sent)), h.now);
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::ProcessBlock { .. })),
            "{actions:?}"
        );
        let actions = h.inline(actions, h.now);
        assert_eq!(disconnected(&actions, 1), None);
    }
    assert_eq!(index_len(&h), 21);
    assert!(!h.chain.tree().has_block(&block.hash()));
    // The chain, asked directly, drops it before checking its body too.
    let mut broken = block.clone();
    broken.transactions.clear();
    let outcome = h.chain.process_new_block(Arc::new(broken), Some(1), false);
    assert!(
        matches!(outcome, Ok(BlockOutcome::NotStored)),
        "{outcome:?}"
    );
}

#[test]
fn an_unrequested_block_without_its_own_work_is_blamed_whatever_its_parent() {
    let mut chain = TestChain::new(Network::Regtest);
    chain.mine_empty(key(1).pubkey_hash());
    let mut h = harness(&chain.blocks[1..]);
    ready_inbound(&mut h, 1);
    // Bits far harder than its hash meets, on a parent nobody knows: not
    // a stranger's orphan to ask headers for, but an invalid block.
    let mut junk = chain.blocks[1].clone();
    junk.header.prev_hash = Hash256([3; 32]);
    junk.header.bits = 0x1d00ffff;
    let actions = h.message(1, Message::Block(Box::new(junk)), h.now);
    assert_eq!(
        disconnected(&actions, 1),
        Some("invalid_block"),
        "{actions:?}"
    );
}

#[test]
fn an_unrequested_block_already_stored_is_dropped_unjudged() {
    let mut chain = TestChain::new(Network::Regtest);
    for _ in 0..3 {
        chain.mine_empty(key(1).pubkey_hash());
    }
    let mut h = harness(&chain.blocks[1..]);
    ready_inbound(&mut h, 1);
    assert_ne!(
        h.protocol.peers[&1].best_known,
        Some(chain.blocks[2].hash())
    );
    let actions =
        h.protocol
            .on_message(1, Message::Block(Box::new(chain.blocks[2].clone())), h.now);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::ProcessBlock { .. })),
        "{actions:?}"
    );
    assert_eq!(disconnected(&actions, 1), None);
    // The peer has it, as a duplicate the chain judged would say.
    assert_eq!(
        h.protocol.peers[&1].best_known,
        Some(chain.blocks[2].hash())
    );
}

fn block_items(blocks: &[crate::consensus::block::Block]) -> Vec<InvItem> {
    blocks
        .iter()
        .map(|b| InvItem {
            kind: InvKind::Block,
            hash: b.hash(),
        })
        .collect()
}

fn getdata_hashes(actions: &[Action], id: PeerId) -> Vec<Hash256> {
    actions
        .iter()
        .flat_map(|a| match a {
            Action::Send(to, Message::GetData(items)) if *to == id => {
                items.iter().map(|i| i.hash).collect()
            }
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn getdata_is_served_lazily_once_per_item_within_the_room_given() {
    let mut chain = TestChain::new(Network::Regtest);
    for _ in 0..5 {
        chain.mine_empty(key(1).pubkey_hash());
    }
    let mut h = harness(&chain.blocks[1..]);
    ready_inbound(&mut h, 1);
    // The same block asked 1 000 times in one message, then 4 others.
    let one = block_items(&chain.blocks[1..2]);
    let request: Vec<InvItem> = std::iter::repeat_n(one[0], 1_000).collect();
    assert!(sent(&h.message(1, Message::GetData(request), h.now), 1).is_empty());
    h.message(1, Message::GetData(block_items(&chain.blocks[2..])), h.now);
    assert!(h.protocol.has_pending_getdata());
    // Each turn serves what the room allows (at least one item).
    let mut blocks = Vec::new();
    for _ in 0..10 {
        for action in h.protocol.serve_getdata(1, 1) {
            if let Action::Send(1, Message::Block(block)) = action {
                blocks.push(block.hash());
            }
        }
    }
    let expected: Vec<Hash256> = chain.blocks[1..].iter().map(|b| b.hash()).collect();
    assert_eq!(blocks, expected, "each block once, in order, one per turn");
    assert!(!h.protocol.has_pending_getdata());
}

#[test]
fn a_block_notfound_goes_to_another_peer_and_a_peer_that_cannot_serve_is_dropped() {
    let mut chain = TestChain::new(Network::Regtest);
    for _ in 0..(MAX_BLOCK_NOTFOUND as usize + 2) {
        chain.mine_empty(key(1).pubkey_hash());
    }
    let headers: Vec<_> = chain.blocks[1..].iter().map(|b| b.header).collect();
    let mut h = harness(&[]);
    ready_inbound(&mut h, 1);
    let actions = h.message(1, Message::Headers(headers.clone()), h.now);
    let asked_of_1 = getdata_hashes(&actions, 1);
    assert!(!asked_of_1.is_empty());
    let addr = "127.0.0.1:40001".parse().unwrap();
    h.protocol.on_connected(2, addr, None, h.now);
    h.message(2, their_version(2, 1), h.now);
    h.message(2, Message::Verack, h.now);
    h.message(2, Message::Headers(headers), h.now);
    // Peer 1 lacks the first block: it goes to peer 2 at once, never again
    // to peer 1.
    let first = vec![InvItem {
        kind: InvKind::Block,
        hash: asked_of_1[0],
    }];
    let actions = h.message(1, Message::NotFound(first), h.now);
    assert!(
        getdata_hashes(&actions, 2).contains(&asked_of_1[0]),
        "{actions:?}"
    );
    assert!(!getdata_hashes(&actions, 1).contains(&asked_of_1[0]));
    // A peer that keeps answering notfound for its own chain is dropped.
    let rest: Vec<InvItem> = asked_of_1[1..]
        .iter()
        .map(|hash| InvItem {
            kind: InvKind::Block,
            hash: *hash,
        })
        .collect();
    let actions = h.message(1, Message::NotFound(rest), h.now);
    assert_eq!(disconnected(&actions, 1), Some("block_notfound"));
}

#[test]
fn a_peer_that_answered_thousands_of_tx_notfound_is_still_asked() {
    let mut h = harness(&[]);
    ready_outbound(&mut h, 1);
    let tx_item = |n: u32| InvItem {
        kind: InvKind::Tx,
        hash: Hash256(crate::consensus::hash::sha256d(&n.to_le_bytes()).0),
    };
    for n in 0..(MAX_PEER_TX_ANNOUNCEMENTS as u32 + 100) {
        let item = tx_item(n);
        let actions = h.message(1, Message::Inv(vec![item]), h.now);
        assert_eq!(
            getdata_hashes(&actions, 1),
            vec![item.hash],
            "announcement {n}"
        );
        h.message(1, Message::NotFound(vec![item]), h.now);
    }
}

#[test]
fn a_block_that_arrived_is_not_a_stall_however_late_it_is_handled() {
    let mut chain = TestChain::new(Network::Regtest);
    chain.mine_empty(key(1).pubkey_hash());
    let mut h = harness(&[]);
    ready_inbound(&mut h, 1);
    let headers: Vec<_> = chain.blocks[1..].iter().map(|b| b.header).collect();
    h.message(1, Message::Headers(headers), h.now);
    h.protocol.on_block_arrived(1, chain.blocks[1].hash());
    let later = h.now + BLOCK_STALL_TIMEOUT * 4;
    for step in 1..=MAX_STALLS {
        let actions = h
            .protocol
            .on_tick(later + Duration::from_secs(u64::from(step)));
        assert_eq!(disconnected(&actions, 1), None);
    }
    let actions = h.message(
        1,
        Message::Block(Box::new(chain.blocks[1].clone())),
        later + Duration::from_secs(10),
    );
    let actions = h.inline(actions, later + Duration::from_secs(10));
    assert_eq!(disconnected(&actions, 1), None);
    assert_eq!(h.chain.height(), 1);
}

#[test]
fn inventory_of_unknown_kinds_is_ignored() {
    let mut h = harness(&[]);
    ready_inbound(&mut h, 1);
    let items = vec![InvItem {
        kind: InvKind::Other(77),
        hash: Hash256([5; 32]),
    }];
    for message in [
        Message::Inv(items.clone()),
        Message::GetData(items.clone()),
        Message::NotFound(items),
    ] {
        let actions = h.message(1, message, h.now);
        assert_eq!(disconnected(&actions, 1), None);
        assert!(sent(&actions, 1).is_empty(), "{actions:?}");
    }
    assert!(!h.protocol.has_pending_getdata());
}

#[test]
fn non_continuous_headers_are_a_violation_and_index_nothing() {
    let mut h = harness_with(&[], requiring_work_of(1_000));
    ready_inbound(&mut h, 1);
    // A low-work header slipped in front of a known one (genesis) must not
    // pass as "already known".
    let low = regtest_headers(1, 4)[0];
    let genesis = Network::Regtest.params().genesis_block().header;
    let actions = h.message(1, Message::Headers(vec![low, genesis]), h.now);
    assert_eq!(disconnected(&actions, 1), Some("non_continuous_headers"));
    assert_eq!(index_len(&h), 1);
}

#[test]
fn headers_claiming_absurd_work_are_refused_without_a_panic() {
    let mut h = harness(&[]);
    ready_inbound(&mut h, 1);
    // Target 1 (bits 0x01010000) claims 2^255 of work per header; two of
    // them overflow 256 bits. No proof of work is needed to send them.
    let genesis = Network::Regtest.params().genesis_hash();
    let first = crate::consensus::block::BlockHeader {
        version: 1,
        prev_hash: genesis,
        merkle_root: Hash256([1; 32]),
        time: Network::Regtest.params().genesis_time + 10,
        bits: 0x0101_0000,
        nonce: 0,
    };
    let second = crate::consensus::block::BlockHeader {
        prev_hash: first.hash(),
        ..first
    };
    let actions = h.message(1, Message::Headers(vec![first, second]), h.now);
    assert_eq!(disconnected(&actions, 1), Some("invalid_header"));
    assert_eq!(index_len(&h), 1);
}

mod hostile_peers;
mod orphans;

#[test]
fn a_mempool_request_is_answered_once_with_the_best_paying_transactions() {
    use crate::consensus::amount::Amount;
    use crate::consensus::transaction::{OutPoint, Transaction, TxIn};
    let mut h = harness(&[]);
    ready_inbound(&mut h, 1);
    // More entries than one answer holds, all of one size, each paying a
    // higher fee than the one before.
    let count = MAX_MEMPOOL_ANSWER + 5;
    let by_fee: Vec<Hash256> = {
        let mut pool = h.protocol.mempool.lock().unwrap();
        (0..count)
            .map(|n| {
                let mut prev = [0u8; 32];
                prev[..8].copy_from_slice(&(n as u64 + 1).to_le_bytes());
                let tx = Transaction {
                    version: 1,
                    inputs: vec![TxIn::Spend {
                        prevout: OutPoint::new(Hash256(prev), 0),
                        pubkey: [2; 33],
                        signature: [0; 64],
                    }],
                    outputs: Vec::new(),
                    lock_time: 0,
                };
                pool.insert_unchecked(tx, Amount::from_units(1_000 + n as u64))
            })
            .collect()
    };
    let actions = h.message(1, Message::Mempool, h.now);
    let invs: Vec<&Vec<InvItem>> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(1, Message::Inv(items)) => Some(items),
            _ => None,
        })
        .collect();
    assert_eq!(invs.len(), 1, "one inv");
    let answered: Vec<Hash256> = invs[0].iter().map(|i| i.hash).collect();
    let best: Vec<Hash256> = by_fee[5..].iter().rev().copied().collect();
    assert_eq!(answered, best, "the best-paying, best first");
    // Asked again on the same connection: not answered again.
    let again = h.message(1, Message::Mempool, h.now);
    assert!(!again
        .iter()
        .any(|a| matches!(a, Action::Send(1, Message::Inv(_)))));
    assert_eq!(disconnected(&again, 1), None);
}

#[test]
fn a_transaction_no_tip_could_accept_costs_its_sender_and_a_policy_refusal_does_not() {
    use crate::consensus::amount::Amount;
    use crate::consensus::transaction::{OutPoint, TxIn, TxOut};
    use crate::testkit::signed_spend;
    let mut chain = TestChain::new(Network::Regtest);
    for _ in 0..=chain.params.coinbase_maturity + 1 {
        chain.mine_empty(key(1).pubkey_hash());
    }
    let mut h = harness(&chain.blocks[1..]);
    ready_inbound(&mut h, 1);
    let coinbase = chain.blocks[1].transactions[0].clone();
    let spent = coinbase.outputs[0];
    let outpoint = OutPoint::new(coinbase.txid(), 0);
    let pay = |units: u64| TxOut {
        amount: Amount::from_units(units),
        owner: key(2).pubkey_hash(),
    };
    // Policy: an output below the dust limit. Refused, its sender stays.
    let dust = signed_spend(&[(outpoint, spent, &key(1))], vec![pay(1)]);
    let actions = h.message(1, Message::Tx(Box::new(dust.clone())), h.now);
    assert_eq!(disconnected(&actions, 1), None);
    assert!(h.protocol.recent_rejects.contains(&dust.txid()));
    // Sent again: ignored, not judged again, still no blame.
    let actions = h.message(1, Message::Tx(Box::new(dust)), h.now);
    assert_eq!(disconnected(&actions, 1), None);
    // A signature that does not verify: no tip could accept it.
    let mut bad = signed_spend(
        &[(outpoint, spent, &key(1))],
        vec![pay(spent.amount.units() - 10_000)],
    );
    if let TxIn::Spend { signature, .. } = &mut bad.inputs[0] {
        signature[10] ^= 1;
    }
    let actions = h.message(1, Message::Tx(Box::new(bad.clone())), h.now);
    assert_eq!(disconnected(&actions, 1), Some("invalid_transaction"));
    assert!(h.protocol.recent_rejects.contains(&bad.txid()));
}

/// A dial that completes its handshake saves the book at once, so a node
/// killed right after finds the address again; more within
/// `ADDRBOOK_PROMPT_SAVE_GAP` wait for the tick that ends it, so listeners
/// that handshake and hang up cannot have the book rewritten at every dial.
#[test]
fn newly_tried_addresses_are_saved_at_once_then_at_most_once_per_gap() {
    let mut h = harness(&[]);
    let dir = tempfile::tempdir().unwrap();
    h.protocol.addrbook = AddrBook::load(dir.path(), Network::Regtest).unwrap();
    let saved = || {
        std::fs::read_to_string(dir.path().join(crate::p2p::addrbook::ADDRBOOK_FILE))
            .unwrap_or_default()
    };
    let dial = |h: &mut Harness, id: PeerId, port: u16, at: Instant| {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        h.protocol.on_connected(id, addr, Some(addr), at);
        h.message(id, their_version(id, 0), at);
        h.message(id, Message::Verack, at);
    };
    let start = h.now;
    dial(&mut h, 1, 41001, start);
    assert!(saved().contains("127.0.0.1:41001"), "{}", saved());
    let soon = h.now + Duration::from_secs(1);
    dial(&mut h, 2, 41002, soon);
    assert!(!saved().contains("127.0.0.1:41002"));
    h.protocol.on_tick(soon);
    assert!(!saved().contains("127.0.0.1:41002"));
    h.protocol.on_tick(h.now + ADDRBOOK_PROMPT_SAVE_GAP);
    assert!(saved().contains("127.0.0.1:41002"), "{}", saved());
}

/// Peers 1 and 2, dialed by us at two ports of 127.0.0.1, past the
/// handshake (their transaction announcements are asked for at once).
fn two_ready_peers(h: &mut Harness) {
    for (id, port) in [(1, 40001), (2, 40002)] {
        outbound_ready(h, id, loopback(port));
    }
}

fn tx_item(n: u8) -> InvItem {
    InvItem {
        kind: InvKind::Tx,
        hash: Hash256([n; 32]),
    }
}

/// A peer that dialed us announces a transaction: it is asked of a peer we
/// dialed that announces it within `INBOUND_TX_REQUEST_DELAY`, and of the
/// inbound one only after that delay, if no one was asked meanwhile.
#[test]
fn an_inbound_announcement_waits_for_a_peer_we_dialed() {
    let mut h = harness(&[]);
    ready_inbound(&mut h, 1);
    outbound_ready(&mut h, 2, loopback(40002));
    let (first, second) = (tx_item(0x51), tx_item(0x52));
    let t0 = h.now;
    let actions = h.message(1, Message::Inv(vec![first, second]), t0);
    assert!(getdata_hashes(&actions, 1).is_empty(), "{actions:?}");
    // The dialed peer announces the first one a second later: asked at once.
    let t1 = t0 + Duration::from_secs(1);
    let actions = h.message(2, Message::Inv(vec![first]), t1);
    assert_eq!(getdata_hashes(&actions, 2), vec![first.hash]);
    // Once the delay is over, the inbound peer is asked for the second
    // alone (the first is asked of peer 2 already).
    let late = t0 + INBOUND_TX_REQUEST_DELAY;
    let actions = h.protocol.on_tick(late - Duration::from_millis(1));
    assert!(getdata_hashes(&actions, 1).is_empty(), "{actions:?}");
    let actions = h.protocol.on_tick(late);
    assert_eq!(getdata_hashes(&actions, 1), vec![second.hash]);
    // Peer 2 lacks the first after all: asked of peer 1 at once.
    let actions = h.message(2, Message::NotFound(vec![first]), late);
    assert_eq!(getdata_hashes(&actions, 1), vec![first.hash]);
}

/// Inbound peers 1 and 3 (and, if `dialed`, peer 2 we dialed) past the
/// handshake; 1 and 3 announce `item` at the time returned.
fn announced_by_inbound_1_and_3(item: InvItem, dialed: bool) -> (Harness, Instant) {
    let mut h = harness(&[]);
    ready_inbound(&mut h, 1);
    ready_inbound_at(&mut h, 3, 40_003);
    if dialed {
        outbound_ready(&mut h, 2, loopback(40_002));
    }
    let t0 = h.now;
    h.message(1, Message::Inv(vec![item]), t0);
    h.message(3, Message::Inv(vec![item]), t0);
    (h, t0)
}

/// An inbound announcer that leaves does not hand the transaction to
/// another inbound one before that one's own delay: a peer we dialed that
/// announces it within the delay is still asked first.
#[test]
fn an_inbound_announcers_delay_outlasts_another_announcers_departure() {
    let item = tx_item(0x71);
    let (mut h, t0) = announced_by_inbound_1_and_3(item, true);
    let actions = h
        .protocol
        .on_disconnected(1, t0 + Duration::from_millis(100));
    assert!(getdata_hashes(&actions, 3).is_empty(), "{actions:?}");
    let actions = h.protocol.on_tick(t0 + Duration::from_millis(300));
    assert!(getdata_hashes(&actions, 3).is_empty(), "{actions:?}");
    let actions = h.message(2, Message::Inv(vec![item]), t0 + Duration::from_millis(500));
    assert_eq!(getdata_hashes(&actions, 2), vec![item.hash]);
    // Without the dialed peer, peer 3 is asked once its own delay is over.
    let (mut h, t0) = announced_by_inbound_1_and_3(item, false);
    h.protocol
        .on_disconnected(1, t0 + Duration::from_millis(100));
    let before = h
        .protocol
        .on_tick(t0 + INBOUND_TX_REQUEST_DELAY - Duration::from_millis(1));
    assert!(getdata_hashes(&before, 3).is_empty(), "{before:?}");
    let after = h.protocol.on_tick(t0 + INBOUND_TX_REQUEST_DELAY);
    assert_eq!(getdata_hashes(&after, 3), vec![item.hash]);
}

/// When a request fails, the next asked is an announcer we dialed, ahead
/// of inbound peers that announced earlier: a crowd of inbound peers that
/// never deliver cannot hold a transaction one timeout each.
#[test]
fn a_failed_request_goes_to_a_dialed_announcer_before_earlier_inbound_ones() {
    let item = tx_item(0x61);
    let (mut h, t0) = announced_by_inbound_1_and_3(item, true);
    let asked_at = t0 + INBOUND_TX_REQUEST_DELAY;
    let actions = h.protocol.on_tick(asked_at);
    let asked: Vec<PeerId> = [1, 3]
        .into_iter()
        .filter(|p| getdata_hashes(&actions, *p) == vec![item.hash])
        .collect();
    assert_eq!(asked.len(), 1, "one inbound announcer asked: {actions:?}");
    // The dialed peer announces it after that request went out; the
    // request times out: the dialed peer is next, not the other inbound one.
    h.message(2, Message::Inv(vec![item]), asked_at);
    let expired = asked_at + TX_REQUEST_TIMEOUT + Duration::from_millis(1);
    let actions = h.protocol.on_tick(expired);
    assert_eq!(getdata_hashes(&actions, 2), vec![item.hash], "{actions:?}");
    let other_inbound = if asked[0] == 1 { 3 } else { 1 };
    assert!(getdata_hashes(&actions, other_inbound).is_empty());
}

/// A transaction another peer delivered frees the place it held among the
/// asked peer's requests in flight; a peer that leaves hands what it
/// announced to the other announcers, and is no longer one.
#[test]
fn a_delivery_elsewhere_frees_the_asked_peer_and_a_leaver_hands_on_its_announcements() {
    use crate::consensus::amount::Amount;
    use crate::consensus::transaction::{OutPoint, TxOut};
    let mut h = harness(&[]);
    two_ready_peers(&mut h);
    // Spends an output the node does not know: kept as an orphan, which
    // does not matter here.
    let spent = TxOut {
        amount: Amount::from_units(50_000),
        owner: key(1).pubkey_hash(),
    };
    let tx = crate::testkit::signed_spend(
        &[(OutPoint::new(Hash256([7; 32]), 0), spent, &key(1))],
        vec![TxOut {
            amount: Amount::from_units(40_000),
            owner: key(2).pubkey_hash(),
        }],
    );
    let delivered = InvItem {
        kind: InvKind::Tx,
        hash: tx.txid(),
    };
    let other = InvItem {
        kind: InvKind::Tx,
        hash: Hash256([9; 32]),
    };
    let actions = h.message(1, Message::Inv(vec![delivered, other]), h.now);
    assert_eq!(
        getdata_hashes(&actions, 1),
        vec![delivered.hash, other.hash]
    );
    let actions = h.message(2, Message::Inv(vec![other]), h.now);
    assert!(getdata_hashes(&actions, 2).is_empty());
    // Peer 2 sends the first one unasked: peer 1 no longer holds a place
    // for it once the tick has looked.
    h.message(2, Message::Tx(Box::new(tx)), h.now);
    h.protocol.on_tick(h.now + Duration::from_secs(1));
    let in_flight = &h.protocol.peers[&1].tx_in_flight;
    assert!(!in_flight.contains(&delivered.hash) && in_flight.contains(&other.hash));
    // Peer 1 leaves: the other one is asked of peer 2, its last announcer.
    let actions = h.protocol.on_disconnected(1, h.now);
    assert_eq!(h.protocol.tx_requests[&other.hash].announcers, vec![2]);
    assert!(
        getdata_hashes(&actions, 2).contains(&other.hash),
        "{actions:?}"
    );
    assert!(h.protocol.peers[&2].tx_announced.contains_key(&other.hash));
}

#[test]
fn transactions_are_asked_in_announcement_order_one_announcer_at_a_time() {
    let mut h = harness(&[]);
    two_ready_peers(&mut h);
    let tx_item = |n: u32| InvItem {
        kind: InvKind::Tx,
        hash: Hash256(crate::consensus::hash::sha256d(&n.to_le_bytes()).0),
    };
    // More than a peer may have in flight, in one announcement: the first
    // ones are asked for, in order; the rest as answers free room.
    let extra = 50;
    let items: Vec<InvItem> = (0..(MAX_TX_IN_FLIGHT_PER_PEER + extra) as u32)
        .map(tx_item)
        .collect();
    let actions = h.message(1, Message::Inv(items.clone()), h.now);
    let first: Vec<Hash256> = items[..MAX_TX_IN_FLIGHT_PER_PEER]
        .iter()
        .map(|i| i.hash)
        .collect();
    assert_eq!(getdata_hashes(&actions, 1), first);
    let actions = h.message(
        1,
        Message::NotFound(items[..MAX_TX_IN_FLIGHT_PER_PEER].to_vec()),
        h.now,
    );
    let rest: Vec<Hash256> = items[MAX_TX_IN_FLIGHT_PER_PEER..]
        .iter()
        .map(|i| i.hash)
        .collect();
    assert_eq!(getdata_hashes(&actions, 1), rest);
    // Peer 2 announces one of those in flight at peer 1: not asked twice
    // at once, but of peer 2 once peer 1's request times out.
    let shared = items[MAX_TX_IN_FLIGHT_PER_PEER];
    let actions = h.message(2, Message::Inv(vec![shared]), h.now);
    assert!(getdata_hashes(&actions, 2).is_empty());
    let later = h.now + TX_REQUEST_TIMEOUT + Duration::from_secs(1);
    let actions = h.protocol.on_tick(later);
    assert_eq!(getdata_hashes(&actions, 2), vec![shared.hash]);
    // Answered `notfound` by its last announcer: forgotten.
    h.message(2, Message::NotFound(vec![shared]), later);
    assert!(!h.protocol.tx_requests.contains_key(&shared.hash));
}

#[test]
fn headers_the_tree_can_judge_never_reach_the_chain_task() {
    let mut chain = TestChain::new(Network::Regtest);
    for _ in 0..5 {
        chain.mine_empty(key(1).pubkey_hash());
    }
    let mut h = harness(&chain.blocks[1..]);
    ready_inbound(&mut h, 1);
    let to_chain = |actions: &[Action]| {
        actions
            .iter()
            .any(|a| matches!(a, Action::ProcessHeaders { .. }))
    };
    // The node's own tip, resent: nothing to index, nothing asked.
    let tip = chain.tip().header;
    for _ in 0..3 {
        let actions = h.protocol.on_message(1, Message::Headers(vec![tip]), h.now);
        assert!(!to_chain(&actions));
        assert!(sent(&actions, 1).is_empty(), "{:?}", sent(&actions, 1));
    }
    // A header whose parent nobody has: the gap is asked for, ten times in
    // a row at most, and never by the chain task.
    let mut stray = tip;
    stray.prev_hash = Hash256([0x5a; 32]);
    while crate::consensus::validation::check_header(&stray, Network::Regtest.params()).is_err() {
        stray.nonce = stray.nonce.wrapping_add(1);
    }
    for n in 1..=MAX_UNCONNECTING_HEADERS + 2 {
        let actions = h
            .protocol
            .on_message(1, Message::Headers(vec![stray]), h.now);
        assert!(!to_chain(&actions));
        let asked = sent(&actions, 1).contains(&"getheaders");
        assert_eq!(asked, n <= MAX_UNCONNECTING_HEADERS, "batch {n}");
        assert_eq!(disconnected(&actions, 1), None);
    }
    // A batch that connects (the tip again) counts as connecting: the next
    // stray one is asked about again.
    h.protocol.on_message(1, Message::Headers(vec![tip]), h.now);
    let actions = h
        .protocol
        .on_message(1, Message::Headers(vec![stray]), h.now);
    assert!(sent(&actions, 1).contains(&"getheaders"));
}

#[test]
fn a_transaction_asked_of_a_peer_that_leaves_is_asked_of_another_announcer() {
    let mut h = harness(&[]);
    two_ready_peers(&mut h);
    let item = InvItem {
        kind: InvKind::Tx,
        hash: Hash256([0x77; 32]),
    };
    let actions = h.message(1, Message::Inv(vec![item]), h.now);
    assert_eq!(getdata_hashes(&actions, 1), vec![item.hash]);
    let actions = h.message(2, Message::Inv(vec![item]), h.now);
    assert!(getdata_hashes(&actions, 2).is_empty());
    let actions = h.protocol.on_disconnected(1, h.now);
    assert_eq!(getdata_hashes(&actions, 2), vec![item.hash]);
}

#[test]
fn a_bounded_set_forgets_its_oldest_past_its_bound() {
    let hash = |n: u32| Hash256(crate::consensus::hash::sha256d(&n.to_le_bytes()).0);
    let mut set = BoundedSet::default();
    for n in 0..100 {
        set.insert_bounded(hash(n), 60);
        set.insert_bounded(hash(n), 60); // a repeat changes nothing
    }
    assert!((0..40).all(|n| !set.contains(&hash(n))));
    assert!((40..100).all(|n| set.contains(&hash(n))));
    assert!((100..1_000).all(|n| !set.contains(&hash(n))));
    assert_eq!((set.set.len(), set.order.len()), (60, 60));
    set.clear();
    assert!(!set.contains(&hash(99)));
}

#[test]
fn block_announcements_ask_for_headers_once_per_answer() {
    let mut h = harness(&[]);
    ready_inbound(&mut h, 1);
    let unknown = |n: u8| {
        Message::Inv(vec![InvItem {
            kind: InvKind::Block,
            hash: Hash256([n; 32]),
        }])
    };
    // The handshake's getheaders is unanswered: a stream of announcements
    // of unknown blocks asks for nothing more meanwhile.
    for n in 0..100 {
        let actions = h.message(1, unknown(n), h.now);
        assert!(getheaders_locator(&actions, 1).is_none(), "{actions:?}");
    }
    // An answer (even an empty one) lets the next announcement ask again,
    // once.
    h.message(1, Message::Headers(Vec::new()), h.now);
    let actions = h.message(1, unknown(100), h.now);
    assert!(getheaders_locator(&actions, 1).is_some(), "{actions:?}");
    let actions = h.message(1, unknown(101), h.now);
    assert!(getheaders_locator(&actions, 1).is_none(), "{actions:?}");
    // So does a request left unanswered past the timeout.
    let later = h.now + HEADERS_RESPONSE_TIMEOUT + Duration::from_secs(1);
    let actions = h.message(1, unknown(102), later);
    assert!(getheaders_locator(&actions, 1).is_some(), "{actions:?}");
}

#[test]
fn a_peer_claiming_a_height_it_does_not_serve_is_not_asked_every_tick() {
    let mut h = harness(&[]);
    let addr = "127.0.0.1:40000".parse().unwrap();
    h.protocol.on_connected(1, addr, None, h.now);
    h.message(1, their_version(1, u32::MAX), h.now);
    let actions = h.message(1, Message::Verack, h.now);
    assert!(getheaders_locator(&actions, 1).is_some());
    // It answers with nothing, again and again: the tick's look for a peer
    // ahead no longer picks it.
    h.message(1, Message::Headers(Vec::new()), h.now);
    for n in 1..20u64 {
        let at = h.now + Duration::from_millis(250) * n as u32;
        let actions = h.protocol.on_tick(at);
        assert!(
            getheaders_locator(&actions, 1).is_none(),
            "tick {n}: {actions:?}"
        );
    }
}

/// Completes the handshake of outbound peer `id`, dialed at `addr`.
fn outbound_ready(h: &mut Harness, id: PeerId, addr: std::net::SocketAddr) -> Vec<Action> {
    let opened = h.protocol.on_connected(id, addr, Some(addr), h.now);
    assert_eq!(sent(&opened, id), vec!["version"]);
    let mut actions = h.message(id, their_version(1_000_000 + id, 0), h.now);
    actions.extend(h.message(id, Message::Verack, h.now));
    actions
}

fn connects(actions: &[Action]) -> Vec<std::net::SocketAddr> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Connect(addr) => Some(*addr),
            _ => None,
        })
        .collect()
}

fn loopback(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn a_feeler_tests_one_new_address_at_a_time_once_outbound_slots_are_full() {
    let mut h = harness(&[]);
    h.protocol.discover = true;
    let now_unix = crate::chain::unix_now();
    // Twenty addresses, no two of which would share a tried slot.
    let mut slots = HashSet::new();
    let book = &mut h.protocol.addrbook;
    let addrs: Vec<_> = (42001..u16::MAX)
        .map(loopback)
        .filter(|a| slots.insert(book.tried_slot(a)))
        .take(20)
        .collect();
    for addr in &addrs {
        book.add_new(*addr, addr.ip(), now_unix, now_unix);
    }
    let outbound = connects(&h.protocol.on_tick(h.now));
    assert_eq!(outbound.len(), TARGET_OUTBOUND);
    for (i, addr) in outbound.iter().enumerate() {
        let actions = outbound_ready(&mut h, 100 + i as PeerId, *addr);
        assert_eq!(disconnected(&actions, 100 + i as PeerId), None);
    }
    // Feelers come every FEELER_INTERVAL on average, from half of it to
    // one and a half times it apart.
    let soonest = h.now + FEELER_INTERVAL / 2 - Duration::from_millis(1);
    assert!(connects(&h.protocol.on_tick(soonest)).is_empty());
    let latest = FEELER_INTERVAL * 3 / 2;
    let due = h.now + latest;
    let feeler = connects(&h.protocol.on_tick(due));
    assert_eq!(feeler.len(), 1, "one feeler beside the full slots");
    let addr = feeler[0];
    assert!(!outbound.contains(&addr) && !h.protocol.addrbook.is_tried(&addr));
    // One at a time: none while it is under way.
    assert!(connects(&h.protocol.on_tick(due + latest)).is_empty());
    // The feeler holds no outbound slot: one that frees is dialed again.
    h.protocol.on_disconnected(100, due);
    let again = connects(&h.protocol.on_tick(due + latest));
    assert_eq!(again.len(), 1, "{again:?}");
    assert_ne!(again[0], addr);
    assert_eq!(
        disconnected(
            &outbound_ready(&mut h, 101 + TARGET_OUTBOUND as PeerId, again[0]),
            101 + TARGET_OUTBOUND as PeerId
        ),
        None
    );
    // It answers: it moves to tried and is let go at once, asked nothing.
    let tried = h.protocol.addrbook.tried_count();
    let actions = outbound_ready(&mut h, 200, addr);
    assert_eq!(disconnected(&actions, 200), Some("feeler"));
    assert_eq!(sent(&actions, 200), vec!["verack"]);
    assert!(h.protocol.addrbook.is_tried(&addr));
    assert_eq!(h.protocol.addrbook.tried_count(), tried + 1);
    h.protocol.on_disconnected(200, due);
    // The next one comes at its interval.
    let later = due + 2 * latest;
    let next = connects(&h.protocol.on_tick(later));
    assert_eq!(next.len(), 1, "{next:?}");
    assert_ne!(next[0], addr);
}

#[test]
fn a_feeler_tests_the_holder_of_a_collision_first() {
    let mut h = harness(&[]);
    h.protocol.discover = true;
    let now_unix = crate::chain::unix_now();
    let (holder, newcomer) = collision_in(&mut h, now_unix);
    for port in 44001..=44010 {
        let addr = loopback(port);
        h.protocol
            .addrbook
            .add_new(addr, holder.ip(), now_unix, now_unix);
    }
    // The outbound slots are full (dials under way elsewhere).
    h.protocol.dialing.extend(
        (1..=TARGET_OUTBOUND as u8).map(|i| std::net::SocketAddr::from(([10, 0, 0, i], 8333))),
    );
    let latest = FEELER_INTERVAL * 3 / 2;
    let due = h.now + latest;
    assert_eq!(connects(&h.protocol.on_tick(due)), vec![holder]);
    // It does not answer (the dial began over a minute ago by the book's
    // clock): at the next feeler the newcomer takes its slot, and the
    // feeler goes to an address of the new table.
    h.protocol.on_connect_failed(holder, due);
    h.protocol.addrbook.mark_attempt(
        holder,
        now_unix - crate::p2p::addrbook::TRIED_TEST_TIMEOUT - 1,
    );
    let next = connects(&h.protocol.on_tick(due + latest));
    assert_eq!(next.len(), 1);
    assert!(h.protocol.addrbook.is_tried(&newcomer));
    assert!(!h.protocol.addrbook.is_tried(&holder));
    assert_eq!(h.protocol.addrbook.collision_count(), 0);
}

/// A book holding `holder` in tried (last connected 5 hours ago) and a
/// newcomer colliding with it since `found`.
fn collision_in(h: &mut Harness, found: u32) -> (std::net::SocketAddr, std::net::SocketAddr) {
    let now_unix = crate::chain::unix_now();
    let book = &mut h.protocol.addrbook;
    let holder = loopback(45000);
    let newcomer = (45001..u16::MAX)
        .map(loopback)
        .find(|a| book.tried_slot(a) == book.tried_slot(&holder))
        .expect("a collision");
    book.add_new(holder, holder.ip(), now_unix, now_unix);
    book.mark_good(holder, now_unix - 5 * 3600);
    book.add_new(newcomer, newcomer.ip(), now_unix, now_unix);
    assert!(!book.mark_good(newcomer, found));
    assert_eq!(book.collision_count(), 1);
    (holder, newcomer)
}

#[test]
fn a_holder_we_are_connected_to_keeps_its_slot() {
    let mut h = harness(&[]);
    let now_unix = crate::chain::unix_now();
    let untested = now_unix - crate::p2p::addrbook::TRIED_TEST_WINDOW - 1;
    let (holder, newcomer) = collision_in(&mut h, untested);
    // Connected since (its handshake was 5 hours ago by the book).
    outbound_ready(&mut h, 1, holder);
    h.protocol.addrbook.mark_good(holder, now_unix - 5 * 3600);
    h.protocol.on_tick(h.now);
    assert!(h.protocol.addrbook.is_tried(&holder));
    assert!(!h.protocol.addrbook.is_tried(&newcomer));
    assert_eq!(h.protocol.addrbook.collision_count(), 0);
}

#[test]
fn collisions_settle_on_a_node_that_runs_no_feelers() {
    // `--connect-only`: no dials from the book, so no feelers.
    let mut h = harness(&[]);
    assert!(!h.protocol.discover);
    let now_unix = crate::chain::unix_now();
    let untested = now_unix - crate::p2p::addrbook::TRIED_TEST_WINDOW - 1;
    let (holder, newcomer) = collision_in(&mut h, untested);
    assert!(connects(&h.protocol.on_tick(h.now)).is_empty());
    assert!(h.protocol.addrbook.is_tried(&newcomer));
    assert!(!h.protocol.addrbook.is_tried(&holder));
    assert_eq!(h.protocol.addrbook.collision_count(), 0);
}
