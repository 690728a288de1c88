//! The address book's cost per operation as it fills: inserting an address,
//! picking one to dial and answering `getaddr`, timed on a book of 1000
//! addresses (the reference) and on a saturated one. Operations that scan the
//! book would cost in proportion to its size: the previous book's insert,
//! two scans, is timed beside them on a map of the same size. Picks and
//! answers examine a constant number of entries; on the large book each
//! examination is a cache miss, which the ratios show.
//!
//! Run: `cargo bench --profile dev --bench addrbook`.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use chaincore::consensus::params::Network;
use chaincore::p2p::addrbook::AddrBook;

/// Inserts timed in each measurement.
const INSERTS: u32 = 5_000;
/// Picks and getaddr answers timed in each measurement.
const PICKS: u32 = 2_000;
const ANSWERS: u32 = 50;

fn address(i: u32) -> SocketAddr {
    let [a, b, c, d] = i.wrapping_mul(2_654_435_761).to_be_bytes();
    SocketAddr::from(([20 + a % 180, b, c, d], 8333))
}

fn source(i: u32) -> IpAddr {
    IpAddr::from([30 + (i % 150) as u8, (i / 150 % 250) as u8, 1, 1])
}

/// Nanoseconds per pick, per address of a getaddr answer and per insert
/// on `book` (picks and answers first, on the book as it is).
fn measure(book: &mut AddrBook, offset: u32, now: u32) -> (f64, f64, f64) {
    let clock = Instant::now();
    let start = Instant::now();
    for _ in 0..PICKS {
        std::hint::black_box(book.select(clock, now, |_| false));
    }
    let pick = start.elapsed().as_nanos() as f64 / f64::from(PICKS);
    let start = Instant::now();
    let mut answered = 0usize;
    for _ in 0..ANSWERS {
        answered += std::hint::black_box(book.sample(1000, now)).len();
    }
    let answer = start.elapsed().as_nanos() as f64 / answered as f64;
    let start = Instant::now();
    for i in offset..offset + INSERTS {
        book.add_new(address(i), source(i), now, now);
    }
    let insert = start.elapsed().as_nanos() as f64 / f64::from(INSERTS);
    (pick, answer, insert)
}

fn main() {
    let now = 1_800_000_000;
    let mut book = AddrBook::new(Network::Main);
    // Reference: a small book, where an insert rarely meets an occupied
    // slot (so it allocates; in a saturated book most offers are refused
    // at their slot).
    // One in a hundred dialed successfully an hour ago, as in the saturated
    // book below (a recent dial would make picks skip it more often).
    for i in 0..1000 {
        book.add_new(address(i), source(i), now, now);
        if i % 100 == 0 {
            book.mark_good(address(i), now - 3600);
        }
    }
    let small_len = book.len();
    let (pick_small, answer_small, insert_small) = measure(&mut book, 1_000_000, now);
    // Saturate: a million offers fill the new table.
    for i in 0..1_000_000 {
        book.add_new(address(i + 2_000_000), source(i), now, now);
        if i % 100 == 0 {
            book.mark_good(address(i + 2_000_000), now - 3600);
        }
    }
    let full_len = book.len();
    let (pick_full, answer_full, insert_full) = measure(&mut book, 5_000_000, now);
    // The previous book's insert into a full table: one pass to count the
    // table, one to find its oldest entry, over a map of the same size.
    let flat: std::collections::HashMap<SocketAddr, (bool, u32)> = (0..full_len as u32)
        .map(|i| (address(i), (i % 5 == 0, i)))
        .collect();
    let scans = 200u32;
    let start = Instant::now();
    for _ in 0..scans {
        let count = flat.values().filter(|e| !e.0).count();
        let oldest = flat.iter().filter(|(_, e)| !e.0).min_by_key(|(_, e)| e.1);
        std::hint::black_box((count, oldest));
    }
    let scan_insert = start.elapsed().as_nanos() as f64 / f64::from(scans);
    println!("address book of {small_len} (reference) vs {full_len} entries:");
    println!(
        "  insert:         {insert_small:>10.0} ns vs {insert_full:>10.0} ns  ratio {:.2}",
        insert_full / insert_small
    );
    println!(
        "  insert by two scans of {full_len} entries (the previous book's way): {scan_insert:>10.0} ns, {:.0} times this book's",
        scan_insert / insert_full
    );
    println!(
        "  pick to dial:   {pick_small:>10.0} ns vs {pick_full:>10.0} ns  ratio {:.2}",
        pick_full / pick_small
    );
    println!(
        "  getaddr answer: {answer_small:>10.0} ns vs {answer_full:>10.0} ns  ratio {:.2} (per address answered)",
        answer_full / answer_small
    );
}
