//! Peers that flood addresses, squat inbound slots or are ourselves.

use super::*;

fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([a, b, c, d], port))
}

fn version_listening_on(nonce: u64, listen_port: u16) -> Message {
    let Message::Version(mut version) = their_version(nonce, 0) else {
        unreachable!()
    };
    version.listen_port = listen_port;
    Message::Version(version)
}

/// An outbound peer at `addr` that completed the handshake (we sent it
/// `getaddr`).
fn ready_outbound(h: &mut Harness, id: PeerId, addr: SocketAddr) {
    let actions = outbound_ready(h, id, addr);
    assert!(sent(&actions, id).contains(&"getaddr"), "{actions:?}");
}

/// An inbound peer at `addr` that completed the handshake.
fn ready_inbound_from(h: &mut Harness, id: PeerId, addr: SocketAddr) {
    h.protocol.on_connected(id, addr, None, h.now);
    h.message(id, their_version(1_000_000 + id, 0), h.now);
    h.message(id, Message::Verack, h.now);
    assert!(h.protocol.peers[&id].ready());
}

fn addr_message(addrs: impl Iterator<Item = SocketAddr>, time: u32) -> Message {
    Message::Addr(
        addrs
            .map(|addr| AddrEntry {
                time,
                services: SERVICE_NETWORK,
                addr,
            })
            .collect(),
    )
}

/// `count` addresses spread over many /16s.
fn spread(count: u32, seed: u8) -> impl Iterator<Item = SocketAddr> {
    (0..count).map(move |i| v4(20 + (i % 150) as u8, (i / 150) as u8, seed, 1, 8333))
}

#[test]
fn addresses_past_a_peers_rate_limit_are_dropped_and_counted() {
    let mut h = harness(&[]);
    ready_outbound(&mut h, 1, v4(8, 8, 8, 8, 8333));
    let first: Vec<SocketAddr> = spread(1000, 1).collect();
    let second: Vec<SocketAddr> = spread(1000, 2).collect();
    // The answer to our getaddr is welcome...
    h.message(1, addr_message(first.iter().copied(), unix_now()), h.now);
    assert_eq!(h.protocol.counters().addr_rate_limited, 0);
    assert!(first.iter().any(|a| h.protocol.addrbook.contains(a)));
    // ...1000 more at once are not.
    h.message(1, addr_message(second.iter().copied(), unix_now()), h.now);
    assert_eq!(h.protocol.counters().addr_rate_limited, 1000);
    assert!(!second.iter().any(|a| h.protocol.addrbook.contains(a)));
    // An inbound peer we never asked gets one address through.
    ready_inbound_from(&mut h, 2, v4(9, 9, 9, 9, 50000));
    h.message(2, addr_message(spread(1000, 3), unix_now()), h.now);
    assert_eq!(h.protocol.counters().addr_rate_limited, 1999);
}

#[test]
fn a_getaddr_answer_after_a_flood_is_mostly_honest_and_never_from_the_future() {
    let mut h = harness(&[]);
    // Ten honest peers in ten groups answer our getaddr.
    for n in 0..10u8 {
        let id = PeerId::from(n) + 1;
        ready_outbound(&mut h, id, v4(60 + n, 1, 1, 1, 8333));
        h.message(id, addr_message(spread(100, n), unix_now() - 3600), h.now);
    }
    // Ten attacker connections from one /16 answer with 1000 addresses of
    // one /16 each, stamped 0xffffffff.
    for n in 0..10u32 {
        let id = 100 + PeerId::from(n);
        ready_outbound(&mut h, id, v4(45, 33, n as u8, 1, 8333));
        let flood = (0..1000u32).map(|i| {
            let [_, _, c, d] = (n * 1000 + i).to_be_bytes();
            v4(45, 34, c, d, 8333)
        });
        h.message(id, addr_message(flood, u32::MAX), h.now);
    }
    ready_inbound_from(&mut h, 500, v4(77, 1, 1, 1, 50000));
    let actions = h.message(500, Message::GetAddr, h.now);
    let answer = actions
        .iter()
        .find_map(|a| match a {
            Action::Send(500, Message::Addr(entries)) => Some(entries.clone()),
            _ => None,
        })
        .expect("an addr answer");
    assert!(answer.len() >= 100, "{} addresses", answer.len());
    let flooded = answer
        .iter()
        .filter(|e| e.addr.ip().to_string().starts_with("45.34."))
        .count();
    assert!(
        flooded * 5 < answer.len(),
        "{flooded} of {} from the flood",
        answer.len()
    );
    assert!(answer.iter().all(|e| e.time <= unix_now()));
}

/// The addresses of the `addr` answer peer `id` got for its `getaddr`.
fn getaddr_answer(h: &mut Harness, id: PeerId, now: Instant) -> Option<Vec<SocketAddr>> {
    let actions = h.message(id, Message::GetAddr, now);
    actions.iter().find_map(|a| match a {
        Action::Send(to, Message::Addr(entries)) if *to == id => {
            let mut addrs: Vec<SocketAddr> = entries.iter().map(|e| e.addr).collect();
            addrs.sort();
            Some(addrs)
        }
        _ => None,
    })
}

#[test]
fn reconnecting_to_ask_getaddr_again_learns_no_more_of_the_book() {
    let mut h = harness(&[]);
    // A book of about 1 000 addresses in many groups.
    for n in 0..10u8 {
        let id = PeerId::from(n) + 1;
        ready_outbound(&mut h, id, v4(60 + n, 1, 1, 1, 8333));
        h.message(id, addr_message(spread(100, n), unix_now() - 3600), h.now);
    }
    let book = h.protocol.addrbook.len();
    assert!(book >= 900, "{book} addresses");

    // A scraper connects again and again from one address.
    let scraper = v4(77, 1, 1, 1, 50000);
    ready_inbound_from(&mut h, 100, scraper);
    let now = h.now;
    let first = getaddr_answer(&mut h, 100, now).expect("an inbound peer is answered");
    assert!(
        !first.is_empty() && first.len() < book,
        "{} of {book}",
        first.len()
    );
    // A second getaddr on one connection is not answered.
    assert_eq!(getaddr_answer(&mut h, 100, now), None);
    for id in 101..110 {
        h.protocol.on_disconnected(id - 1, now);
        ready_inbound_from(&mut h, id, scraper);
        let again = getaddr_answer(&mut h, id, now + Duration::from_secs(id)).unwrap();
        assert_eq!(again, first, "connection {id} learned other addresses");
    }

    // A day and more later the book is sampled again.
    let later = h.now + ADDR_ANSWER_LIFETIME + ADDR_ANSWER_SPREAD + Duration::from_secs(1);
    ready_inbound_from(&mut h, 200, v4(78, 1, 1, 1, 50000));
    let fresh = getaddr_answer(&mut h, 200, later).unwrap();
    assert_ne!(fresh, first);

    // An outbound peer, which we chose, is not answered at all.
    let chosen = v4(90, 1, 1, 1, 8333);
    ready_outbound(&mut h, 300, chosen);
    assert_eq!(getaddr_answer(&mut h, 300, later), None);
}

#[test]
fn a_book_that_more_than_doubles_is_sampled_again_before_the_day_is_out() {
    let mut h = harness(&[]);
    ready_outbound(&mut h, 1, v4(60, 1, 1, 1, 8333));
    h.message(1, addr_message(spread(100, 1), unix_now() - 3600), h.now);
    let small = h.protocol.addrbook.len();
    ready_inbound_from(&mut h, 100, v4(77, 1, 1, 1, 50000));
    let now = h.now;
    let first = getaddr_answer(&mut h, 100, now).unwrap();

    // The book grows past twice its size: the next inbound peer hears of
    // the new addresses (a fifth or so of 300 sampled, none is nearly
    // impossible).
    for n in 2..5u8 {
        let id = PeerId::from(n);
        ready_outbound(&mut h, id, v4(60 + n, 1, 1, 1, 8333));
        h.message(id, addr_message(spread(100, n), unix_now() - 3600), h.now);
    }
    assert!(h.protocol.addrbook.len() > 2 * small);
    ready_inbound_from(&mut h, 101, v4(78, 1, 1, 1, 50000));
    let grown = getaddr_answer(&mut h, 101, now).unwrap();
    let new_ones = grown
        .iter()
        .filter(|a| !spread(100, 1).any(|old| old == **a))
        .count();
    assert!(new_ones > 0, "{grown:?}");
    assert_ne!(grown, first);
}

#[test]
fn a_sample_of_mostly_worthless_entries_is_not_kept_for_the_day() {
    let mut h = harness(&[]);
    // A book of addresses last seen 40 days ago (a node back from a long
    // downtime): none is worth sharing.
    let stale = unix_now() - 40 * 24 * 60 * 60;
    ready_outbound(&mut h, 1, v4(60, 1, 1, 1, 8333));
    h.message(1, addr_message(spread(300, 1), stale), h.now);
    // One source reaches 16 new buckets (1 024 slots): 300 addresses
    // collide in about 45 of them, more or fewer by the book's random key.
    let stale_book = h.protocol.addrbook.len();
    assert!(stale_book >= 200, "{stale_book} addresses");
    ready_inbound_from(&mut h, 100, v4(77, 1, 1, 1, 50000));
    let now = h.now;
    // Only the peer we reached is worth sharing.
    let first = getaddr_answer(&mut h, 100, now).unwrap();
    assert!(first.len() <= 1, "{first:?}");

    // Fresh addresses arrive, short of doubling the book: the next peer
    // hears of them all the same.
    ready_outbound(&mut h, 2, v4(61, 1, 1, 1, 8333));
    h.message(2, addr_message(spread(100, 2), unix_now()), h.now);
    assert!(h.protocol.addrbook.len() <= 2 * stale_book);
    ready_inbound_from(&mut h, 101, v4(78, 1, 1, 1, 50000));
    let answer = getaddr_answer(&mut h, 101, now).unwrap();
    let fresh = answer
        .iter()
        .filter(|a| spread(100, 2).any(|new| new == **a))
        .count();
    assert!(fresh > 0, "{answer:?}");
}

#[test]
fn a_full_inbound_table_evicts_from_the_largest_group_never_a_protected_peer() {
    let mut h = harness(&[]);
    // Three honest inbound peers, measured fast by ping, connected first.
    let honest = [
        v4(8, 8, 8, 8, 50000),
        v4(1, 1, 1, 1, 50000),
        v4(9, 9, 9, 9, 50000),
    ];
    for (i, addr) in honest.iter().enumerate() {
        ready_inbound_from(&mut h, 1 + i as PeerId, *addr);
    }
    let ping_at = h.now + PING_INTERVAL + Duration::from_secs(1);
    let actions = h.protocol.on_tick(ping_at);
    for action in &actions {
        if let Action::Send(id, Message::Ping(nonce)) = action {
            h.message(
                *id,
                Message::Pong(*nonce),
                ping_at + Duration::from_millis(20),
            );
        }
    }
    assert!(h.protocol.peers[&1].min_ping.is_some());
    // An attacker fills every other inbound slot from one /16.
    let mut id = 100;
    while h.protocol.peers.values().filter(|p| p.inbound).count() < MAX_INBOUND {
        let addr = v4(45, 33, (id / 200) as u8, (id % 200) as u8, 40000);
        assert!(h.protocol.on_connected(id, addr, None, ping_at).is_empty());
        id += 1;
    }
    let last_attacker = id - 1;
    // A newcomer gets in; the youngest of the attacker's group goes.
    let actions = h
        .protocol
        .on_connected(9999, v4(77, 88, 8, 8, 50000), None, ping_at);
    assert_eq!(disconnected(&actions, last_attacker), Some("evicted"));
    assert_eq!(disconnected(&actions, 9999), None);
    assert!(h.protocol.peers.contains_key(&9999));
    assert!(!h.protocol.peers.contains_key(&last_attacker));
    assert_eq!(h.protocol.counters().inbound_evictions, 1);
    // Newcomer after newcomer: only the attacker's peers are evicted.
    for n in 0..50u64 {
        let newcomer = 10_000 + n;
        let addr = v4(100 + n as u8, 1, 1, 1, 50000);
        let actions = h.protocol.on_connected(newcomer, addr, None, ping_at);
        let evicted: Vec<PeerId> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Disconnect(id, "evicted") => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(evicted.len(), 1, "{actions:?}");
        assert!(
            (100..=last_attacker).contains(&evicted[0]),
            "evicted {}",
            evicted[0]
        );
    }
    assert!(h.protocol.peers.contains_key(&1));
    assert!(h.protocol.peers.contains_key(&2));
    assert!(h.protocol.peers.contains_key(&3));
}

#[test]
fn outbound_connections_go_to_distinct_groups() {
    let mut h = harness(&[]);
    h.protocol.discover = true;
    let now_unix = unix_now();
    // 200 fresh addresses of one /16, heard of from 50 sources...
    for i in 0..200u32 {
        let source = IpAddr::from([30 + (i % 50) as u8, 1, 1, 1]);
        h.protocol
            .addrbook
            .add_new(v4(45, 34, i as u8, 1, 8333), source, now_unix, now_unix);
    }
    // ...and a few older ones in other groups. A bucket slot can already be
    // taken (the bucket key is random), so count the groups the book kept.
    let mut groups_kept = 1;
    for n in 0..5u8 {
        let addr = v4(60 + n, 1, 1, 1, 8333);
        h.protocol.addrbook.add_new(
            addr,
            IpAddr::from([90, n, 1, 1]),
            now_unix - 86_400,
            now_unix,
        );
        groups_kept += usize::from(h.protocol.addrbook.contains(&addr));
    }
    assert!(groups_kept >= 4, "the book kept {groups_kept} groups");
    let mut dialed = Vec::new();
    for tick in 0..100u64 {
        let actions = h.protocol.on_tick(h.now + Duration::from_secs(tick));
        dialed.extend(connects(&actions));
    }
    assert_eq!(dialed.len(), groups_kept, "{dialed:?}");
    let groups: HashSet<NetGroup> = dialed.iter().map(|a| NetGroup::of(a.ip())).collect();
    assert_eq!(groups.len(), dialed.len(), "{dialed:?}");
}

#[test]
fn an_address_that_is_ourselves_is_not_dialed_for_an_hour() {
    let mut h = harness(&[]);
    h.protocol.discover = true;
    let us = v4(8, 8, 4, 4, 27333);
    h.protocol
        .addrbook
        .add_new(us, us.ip(), unix_now(), unix_now());
    assert_eq!(connects(&h.protocol.on_tick(h.now)), vec![us]);
    let ours = h.protocol.on_connected(2, us, Some(us), h.now);
    let Action::Send(_, Message::Version(v)) = &ours[0] else {
        panic!("{ours:?}")
    };
    // Our own version arrives on the inbound side of the same connection.
    h.protocol
        .on_connected(3, v4(8, 8, 4, 4, 50000), None, h.now);
    let actions = h.message(3, their_version(v.nonce, 0), h.now);
    assert_eq!(disconnected(&actions, 3), Some("self_connection"));
    assert_eq!(disconnected(&actions, 2), Some("self_connection"));
    h.protocol.on_disconnected(2, h.now);
    h.protocol.on_disconnected(3, h.now);
    for minutes in [2, 10, 30, 59] {
        let later = h.now + Duration::from_secs(minutes * 60);
        assert!(
            connects(&h.protocol.on_tick(later)).is_empty(),
            "dialed ourselves after {minutes} minutes"
        );
    }
    let later = h.now + SELF_CONNECTION_BACKOFF + Duration::from_secs(1);
    assert_eq!(connects(&h.protocol.on_tick(later)), vec![us]);
}

#[test]
fn our_version_nonces_are_forgotten_with_their_connections() {
    let mut h = harness(&[]);
    for id in 1..=10_000u64 {
        let addr = v4(8, 8, (id >> 8) as u8, id as u8, 8333);
        h.protocol.on_connected(id, addr, Some(addr), h.now);
        assert!(h.protocol.our_nonces.len() <= h.protocol.peer_count());
        h.protocol.on_disconnected(id, h.now);
    }
    assert!(h.protocol.our_nonces.is_empty());
}

#[test]
fn a_peer_connected_inbound_is_not_dialed_again() {
    let mut h = harness(&[]);
    h.protocol.discover = true;
    let from = v4(8, 8, 8, 8, 50000);
    h.protocol.on_connected(1, from, None, h.now);
    h.message(1, version_listening_on(77, 27333), h.now);
    h.message(1, Message::Verack, h.now);
    let listening = v4(8, 8, 8, 8, 27333);
    assert!(h.protocol.addrbook.contains(&listening));
    for tick in 0..10u64 {
        let actions = h.protocol.on_tick(h.now + Duration::from_secs(tick));
        assert!(connects(&actions).is_empty(), "{actions:?}");
    }
    h.protocol.on_disconnected(1, h.now);
    let later = h.now + Duration::from_secs(20);
    assert_eq!(connects(&h.protocol.on_tick(later)), vec![listening]);
}
