//! The address book's bounds, driven directly.

use super::*;

const NOW: u32 = 1_800_000_000;

fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([a, b, c, d], port))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `count` addresses spread over many /16s (the first two octets vary).
fn spread(count: usize, seed: u8) -> impl Iterator<Item = SocketAddr> {
    (0..count).map(move |i| {
        let i = i as u32;
        v4(
            20 + (i % 150) as u8,
            ((i / 150) % 250) as u8,
            seed,
            1 + (i % 7) as u8,
            8333,
        )
    })
}

#[test]
fn one_source_flooding_one_group_fills_one_bucket() {
    let mut book = AddrBook::new(Network::Main);
    let attacker = ip("45.33.1.1");
    for i in 0..10_000u32 {
        let [_, _, c, d] = i.to_be_bytes();
        book.add_new(v4(45, 34, c, d, 8333), attacker, NOW, NOW);
    }
    // All its addresses of one group, from one source group: one bucket.
    assert!(book.len() <= BUCKET_SIZE, "{} kept", book.len());
    assert_eq!(book.new_buckets_used().len(), 1);
    book.check_consistency();
}

#[test]
fn one_source_spreading_over_many_groups_fills_at_most_its_buckets() {
    let mut book = AddrBook::new(Network::Main);
    let attacker = ip("45.33.1.1");
    for addr in spread(10_000, 1) {
        book.add_new(addr, attacker, NOW, NOW);
    }
    assert!(book.new_buckets_used().len() <= NEW_BUCKETS_PER_SOURCE_GROUP as usize);
    assert!(book.len() <= NEW_BUCKETS_PER_SOURCE_GROUP as usize * BUCKET_SIZE);
    // Another source in the attacker's /16 is the same source group.
    for addr in spread(10_000, 2) {
        book.add_new(addr, ip("45.33.200.7"), NOW, NOW);
    }
    assert!(book.new_buckets_used().len() <= NEW_BUCKETS_PER_SOURCE_GROUP as usize);
    book.check_consistency();
}

#[test]
fn a_getaddr_answer_from_a_flooded_book_is_mostly_other_sources() {
    let mut book = AddrBook::new(Network::Main);
    let mut honest = HashSet::new();
    for source in 0..20u8 {
        let source_ip = IpAddr::from([60 + source, 1, 1, 1]);
        for addr in spread(50, source) {
            if book.add_new(addr, source_ip, NOW - 3600, NOW) {
                honest.insert(addr);
            }
        }
    }
    assert!(honest.len() > 500, "{} honest kept", honest.len());
    // One source floods 10 000 fresh addresses of one /16, then 10 000
    // more stamped far in the future.
    let attacker = ip("45.33.1.1");
    for i in 0..20_000u32 {
        let [_, _, c, d] = i.to_be_bytes();
        let time = if i < 10_000 { NOW } else { u32::MAX };
        book.add_new(v4(45, 34, c, d, 8333), attacker, time, NOW);
    }
    let answer = book.sample(MAX_ADDR_ENTRIES_FOR_TEST, NOW);
    assert!(answer.len() >= 100, "{} in the answer", answer.len());
    let flooded = answer.iter().filter(|(a, _)| !honest.contains(a)).count();
    assert!(
        flooded * 5 < answer.len(),
        "{flooded} of {} from the flooding source",
        answer.len()
    );
    assert!(answer.iter().all(|(_, time)| *time <= NOW));
}

/// `MAX_ADDR_ENTRIES` of the wire, the size of a `getaddr` answer.
const MAX_ADDR_ENTRIES_FOR_TEST: usize = crate::wire::constants::MAX_ADDR_ENTRIES;

#[test]
fn future_timestamps_come_back_as_old() {
    let mut book = AddrBook::new(Network::Main);
    let addr = v4(8, 8, 8, 8, 8333);
    // Announced by the address itself (no relay penalty), from the future.
    assert!(book.add_new(addr, addr.ip(), u32::MAX, NOW));
    let far = v4(9, 9, 9, 9, 8333);
    assert!(book.add_new(far, ip("1.1.1.1"), NOW + ADDR_FUTURE_TOLERANCE + 1, NOW));
    let answer = book.sample(10, NOW);
    assert_eq!(answer.len(), 1, "23% of 2, rounded up");
    let mut times: HashMap<SocketAddr, u32> = HashMap::new();
    for _ in 0..50 {
        times.extend(book.sample(10, NOW));
    }
    assert_eq!(times[&addr], NOW - ADDR_UNBELIEVED_AGE);
    assert_eq!(times[&far], NOW - ADDR_UNBELIEVED_AGE - ADDR_RELAY_PENALTY);
    // A timestamp within the tolerance is believed, less the relay penalty.
    assert_eq!(believed_time(NOW + 60, NOW), NOW + 60);
    assert_eq!(believed_time(0, NOW), NOW - ADDR_UNBELIEVED_AGE);
}

#[test]
fn non_routable_addresses_are_refused_on_main_and_test_and_loopback_kept_on_regtest() {
    let refused = [
        v4(127, 0, 0, 1, 8333),
        v4(10, 0, 0, 1, 8333),
        v4(192, 168, 1, 1, 8333),
        v4(169, 254, 1, 1, 8333),
        v4(192, 0, 2, 1, 8333),
        v4(0, 0, 0, 0, 8333),
        "[::1]:8333".parse().unwrap(),
        "[fd00::1]:8333".parse().unwrap(),
    ];
    for network in [Network::Main, Network::Test] {
        let mut book = AddrBook::new(network);
        for addr in refused {
            assert!(!book.add_new(addr, ip("8.8.8.8"), NOW, NOW), "{addr}");
            book.mark_good(addr, NOW);
            assert!(!book.contains(&addr), "{addr} on {network:?}");
        }
        assert!(book.is_empty());
        assert!(book.add_new(v4(8, 8, 8, 8, 8333), ip("1.1.1.1"), NOW, NOW));
        assert!(!book.add_new(v4(8, 8, 8, 9, 0), ip("1.1.1.1"), NOW, NOW));
    }
    let mut book = AddrBook::new(Network::Regtest);
    assert!(book.add_new(v4(127, 0, 0, 1, 18444), ip("127.0.0.1"), NOW, NOW));
    book.mark_good(v4(127, 0, 0, 1, 18445), NOW);
    assert_eq!((book.new_count(), book.tried_count()), (1, 1));
    assert!(!book.add_new(v4(192, 0, 2, 1, 18444), ip("127.0.0.1"), NOW, NOW));
    assert!(!book.add_new(v4(0, 0, 0, 0, 18444), ip("127.0.0.1"), NOW, NOW));
}

#[test]
fn every_operation_costs_a_bounded_number_of_steps() {
    // 100 000 inserts from 1 000 sources, a dial and a handshake every 10,
    // and a getaddr answer every 1 000: the work counted (entries and
    // slots examined) stays a small constant per operation, where a scan
    // of the book per insert would be thousands each.
    let mut book = AddrBook::new(Network::Main);
    let now = Instant::now();
    let mut operations = 0u64;
    let mut answers = 0u64;
    for i in 0..100_000u32 {
        let [_, b, c, d] = i.to_be_bytes();
        let addr = v4(20 + (i % 200) as u8, b.wrapping_add(c), d, 1, 8333);
        let source = IpAddr::from([30 + (i % 50) as u8, (i % 20) as u8, 1, 1]);
        book.add_new(addr, source, NOW - (i % 5000), NOW);
        operations += 1;
        if i % 10 == 0 {
            if let Some(picked) = book.select(now, NOW, |_| false) {
                book.mark_attempt(picked, NOW);
                book.mark_good(picked, NOW);
            }
            operations += 3;
        }
        if i % 1000 == 0 {
            answers += book.sample(MAX_ADDR_ENTRIES_FOR_TEST, NOW).len() as u64;
        }
    }
    assert!(book.len() > 10_000, "{} kept", book.len());
    assert!(book.tried_count() > 1000, "{} tried", book.tried_count());
    // A scan of the book in any insert would cost over 10 000 steps.
    let bound = 10 * (operations + answers);
    println!(
        "{} steps for {operations} operations and {answers} addresses answered (bound {bound})",
        book.work()
    );
    assert!(book.work() <= bound, "{} steps", book.work());
    book.check_consistency();
}

/// 500 addresses of one /16 (its two tried buckets, 128 slots, collide)
/// heard of from many sources, each then completing a handshake; with the
/// addresses the book kept.
fn one_group_all_good() -> (AddrBook, Vec<SocketAddr>) {
    let mut book = AddrBook::new(Network::Main);
    let addrs: Vec<SocketAddr> = (0..500u16)
        .map(|i| v4(8, 8, (i >> 8) as u8, i as u8, 8333))
        .collect();
    for (i, addr) in addrs.iter().enumerate() {
        book.add_new(*addr, IpAddr::from([1, i as u8, 1, 1]), NOW, NOW);
    }
    let kept: Vec<SocketAddr> = addrs.iter().copied().filter(|a| book.contains(a)).collect();
    for addr in &kept {
        book.mark_good(*addr, NOW);
    }
    (book, kept)
}

#[test]
fn a_handshake_moves_an_address_to_tried_unless_its_slot_is_held() {
    let (book, kept) = one_group_all_good();
    assert!(book.tried_count() <= TRIED_BUCKETS_PER_GROUP as usize * BUCKET_SIZE);
    assert!(book.tried_count() > 0);
    assert!(book.len() <= kept.len());
    book.check_consistency();
}

#[test]
fn failures_back_off_and_selection_skips_what_it_is_told() {
    let mut book = AddrBook::new(Network::Regtest);
    let a = v4(127, 0, 0, 1, 1000);
    book.add_new(a, a.ip(), NOW, NOW);
    let now = Instant::now();
    book.mark_failed(a, now);
    assert_eq!(book.select(now, NOW, |_| false), None);
    assert_eq!(book.select(now + MAX_RETRY_DELAY, NOW, |_| false), Some(a));
    assert_eq!(book.select(now + MAX_RETRY_DELAY, NOW, |x| *x == a), None);
    // A failure reported with an earlier clock never shortens a wait.
    for _ in 0..10 {
        book.mark_failed(a, now);
    }
    book.mark_failed(a, now + Duration::from_secs(100));
    let until = book.entries[&a].next_attempt.unwrap();
    assert_eq!(until, now + Duration::from_secs(100) + MAX_RETRY_DELAY);
    book.mark_failed(a, now);
    assert_eq!(book.entries[&a].next_attempt.unwrap(), until);
}

#[test]
fn saves_and_loads_with_the_same_buckets() {
    // Loading judges timestamps by the real clock.
    let now = crate::chain::unix_now();
    let dir = tempfile::tempdir().unwrap();
    let mut book = AddrBook::load(dir.path(), Network::Main).unwrap();
    for (i, addr) in spread(3000, 9).enumerate() {
        book.add_new(
            addr,
            IpAddr::from([70, (i % 30) as u8, 1, 1]),
            now - 600,
            now,
        );
    }
    let good: Vec<SocketAddr> = book.new_ids.iter().copied().take(100).collect();
    for addr in &good {
        book.mark_good(*addr, now);
    }
    book.save().unwrap();
    let loaded = AddrBook::load(dir.path(), Network::Main).unwrap();
    loaded.check_consistency();
    assert_eq!(loaded.key, book.key);
    assert_eq!(loaded.tried_slots, book.tried_slots);
    assert_eq!(loaded.len(), book.len());
    assert_eq!(loaded.tried_count(), book.tried_count());
    // Every entry comes back, with its timestamps as they were (a relayed
    // address is not aged again by a restart); one heard of from several
    // sources keeps one of its buckets.
    for (addr, entry) in &book.entries {
        let back = &loaded.entries[addr];
        assert_eq!(
            (back.last_seen, back.last_success, back.source),
            (entry.last_seen, entry.last_success, entry.source),
            "{addr}"
        );
    }
    let file = std::fs::read_to_string(dir.path().join(ADDRBOOK_FILE)).unwrap();
    assert!(file.starts_with("{\"version\":2,"), "{}", &file[..40]);
}

#[test]
fn reads_the_unversioned_format_of_earlier_releases() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(ADDRBOOK_FILE),
        r#"{"8.8.8.8:8333": {"tried": true, "last_seen": 1700000000},
            "9.9.9.9:8333": {"tried": false, "last_seen": 1700000001},
            "127.0.0.1:8333": {"tried": false, "last_seen": 1700000001}}"#,
    )
    .unwrap();
    let book = AddrBook::load(dir.path(), Network::Main).unwrap();
    assert_eq!((book.tried_count(), book.new_count()), (1, 1));
    assert!(book.contains(&v4(8, 8, 8, 8, 8333)));
    book.check_consistency();
}

#[test]
fn a_corrupt_file_is_a_clear_error_and_an_empty_book() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(ADDRBOOK_FILE);
    let cases: [(&[u8], &str); 5] = [
        (
            b"{\"version\":2,\"key\":\"00\",\"entries\":[]}",
            "key \"00\" is not 32 hex bytes",
        ),
        (b"\x00\xffnot json", "is corrupt"),
        (
            b"{\"version\":7,\"key\":\"\",\"entries\":[]}",
            "format version 7",
        ),
        (b"{\"version\":\"two\"}", "is not a number"),
        (b"{\"8.8.8.8:1\": {\"tried\": 3}}", "is corrupt"),
    ];
    for (bytes, expected) in cases {
        std::fs::write(&path, bytes).unwrap();
        let error = AddrBook::load(dir.path(), Network::Main).unwrap_err();
        let message = error.to_string();
        assert!(message.contains(expected), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        let book = AddrBook::open(dir.path(), Network::Main);
        assert!(book.is_empty());
        assert!(!path.exists());
        assert_eq!(
            std::fs::read(dir.path().join(ADDRBOOK_CORRUPT_FILE)).unwrap(),
            bytes
        );
    }
    let big = std::fs::File::create(&path).unwrap();
    big.set_len(MAX_ADDRBOOK_FILE_BYTES + 1).unwrap();
    let error = AddrBook::load(dir.path(), Network::Main).unwrap_err();
    assert!(matches!(error, AddrBookError::TooLarge { .. }), "{error}");
}

/// A book holding `holder` in tried and `newcomer` in new, both of one
/// /16, whose tried slots are the same; `holder` connected at `at`.
fn colliding_pair(at: u32) -> (AddrBook, SocketAddr, SocketAddr) {
    let mut book = AddrBook::new(Network::Main);
    let holder = v4(8, 8, 0, 1, 8333);
    let newcomer = (2..=u16::MAX)
        .map(|i| v4(8, 8, (i >> 8) as u8, i as u8, 8333))
        .find(|a| book.tried_slot(a) == book.tried_slot(&holder))
        .expect("two addresses of a /16 share a tried slot");
    book.add_new(holder, ip("1.2.3.4"), at, at);
    assert!(book.mark_good(holder, at));
    book.add_new(newcomer, ip("1.2.3.4"), at, at);
    (book, holder, newcomer)
}

fn is_tried(book: &AddrBook, a: &SocketAddr) -> bool {
    book.entries.get(a).is_some_and(|e| e.is_tried())
}

#[test]
fn a_newcomer_colliding_in_tried_waits_for_a_test_of_the_holder() {
    // The holder connected 5 hours before: not recent enough to keep its
    // slot without a test.
    let found = NOW;
    let (mut book, holder, newcomer) = colliding_pair(found - 5 * 3600);
    assert!(!book.mark_good(newcomer, found), "moved without a test");
    assert!(is_tried(&book, &holder) && !is_tried(&book, &newcomer));
    assert_eq!(book.collision_holders(), vec![holder]);
    // Untested, the collision waits the test window out.
    assert!(!book.resolve_collisions(found + TRIED_TEST_WINDOW - 1));
    assert_eq!(book.collision_count(), 1);
    // A test begins: it has `TRIED_TEST_TIMEOUT` to connect.
    let test = found + 600;
    book.mark_attempt(holder, test);
    assert!(!book.resolve_collisions(test + TRIED_TEST_TIMEOUT - 1));
    assert!(is_tried(&book, &holder));
    // It did not connect: the newcomer takes the slot, the holder goes
    // back to new.
    assert!(book.resolve_collisions(test + TRIED_TEST_TIMEOUT));
    assert!(is_tried(&book, &newcomer) && !is_tried(&book, &holder));
    assert!(book.contains(&holder));
    assert_eq!(book.collision_count(), 0);
    book.check_consistency();
}

#[test]
fn a_holder_that_answers_its_test_keeps_its_slot() {
    let found = NOW;
    let (mut book, holder, newcomer) = colliding_pair(found - 5 * 3600);
    book.mark_good(newcomer, found);
    book.mark_attempt(holder, found + 10);
    assert!(!book.mark_good(holder, found + 11), "already tried");
    assert!(!book.resolve_collisions(found + 3600));
    assert!(is_tried(&book, &holder) && !is_tried(&book, &newcomer));
    assert_eq!(book.collision_count(), 0);
    // A holder that connected lately keeps its slot at once.
    let (mut book, holder, newcomer) = colliding_pair(found - 3600);
    book.mark_good(newcomer, found);
    assert!(!book.resolve_collisions(found + 1));
    assert!(is_tried(&book, &holder) && !is_tried(&book, &newcomer));
    assert_eq!(book.collision_count(), 0);
    book.check_consistency();
}

#[test]
fn a_collision_never_tested_gives_the_slot_to_the_newcomer() {
    let found = NOW;
    let (mut book, holder, newcomer) = colliding_pair(found - 5 * 3600);
    book.mark_good(newcomer, found);
    assert!(book.resolve_collisions(found + TRIED_TEST_WINDOW));
    assert!(is_tried(&book, &newcomer) && !is_tried(&book, &holder));
    book.check_consistency();
}

#[test]
fn collisions_waiting_for_a_test_are_bounded() {
    let (book, _) = one_group_all_good();
    assert_eq!(book.collision_count(), TRIED_COLLISIONS_MAX);
    book.check_consistency();
}

#[test]
fn a_feeler_picks_from_the_new_table_alone() {
    let mut book = AddrBook::new(Network::Regtest);
    let tried = v4(127, 0, 0, 1, 1000);
    let new = v4(127, 0, 0, 1, 1001);
    book.add_new(tried, tried.ip(), NOW, NOW);
    assert!(book.mark_good(tried, NOW));
    book.add_new(new, new.ip(), NOW, NOW);
    let now = Instant::now();
    for _ in 0..64 {
        assert_eq!(book.select_new(now, NOW, |_| false), Some(new));
    }
    assert_eq!(book.select_new(now, NOW, |a| *a == new), None);
}
