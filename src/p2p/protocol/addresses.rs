//! Addresses: answering an inbound peer's first `getaddr` from a cached
//! sample of the address book, and taking `addr` entries within the peer's
//! rate limit.

use super::*;

/// The sample that answers `getaddr`, kept so that reconnecting and asking
/// again yields the same addresses, not a fresh share of the book each
/// time (Bitcoin Core's `m_addr_response_caches`): scraping the whole book,
/// to learn whom to eclipse, takes a day per sample.
#[derive(Debug)]
pub(super) struct AddrAnswer {
    entries: Vec<AddrEntry>,
    expires: Instant,
    /// The book's size when sampled.
    book_len: usize,
}

impl AddrAnswer {
    /// Whether the answer still serves at `now` for a book of `book_len`
    /// entries: until it expires, or until the book has more than doubled
    /// (a node that just started and knew few addresses would otherwise
    /// hand out its first handful for a day; growing a large book twofold
    /// is beyond a peer's rate-limited `addr`).
    fn serves(&self, now: Instant, book_len: usize) -> bool {
        now < self.expires && book_len <= self.book_len.saturating_mul(2)
    }
}

impl Protocol {
    /// Answers the first `getaddr` of an inbound connection with the cached
    /// sample of the book. Outbound peers are not answered: we chose them,
    /// and our answer would tell them which node they reached (as in
    /// Bitcoin Core, which ignores `getaddr` from outbound connections).
    pub(super) fn on_getaddr(&mut self, id: PeerId, now: Instant, actions: &mut Vec<Action>) {
        let peer = self.peers.get_mut(&id).expect("checked");
        if !peer.inbound {
            tracing::debug!(peer = id, "getaddr from an outbound peer: ignored");
            return;
        }
        if peer.answered_getaddr {
            return;
        }
        peer.answered_getaddr = true;
        let book_len = self.addrbook.len();
        if !self
            .addr_answer
            .as_ref()
            .is_some_and(|answer| answer.serves(now, book_len))
        {
            let entries = self
                .addrbook
                .sample(MAX_ADDR_ENTRIES, unix_now())
                .into_iter()
                .map(|(addr, time)| AddrEntry {
                    time,
                    services: SERVICE_NETWORK,
                    addr,
                })
                .collect::<Vec<_>>();
            // A sample under half of what the book's size allows (most
            // entries too old or failed, say after a long downtime) is not
            // kept: it would answer every peer with next to nothing for a
            // day.
            if entries.len() * 2 < self.addrbook.sample_size(MAX_ADDR_ENTRIES) {
                actions.push(Action::Send(id, Message::Addr(entries)));
                return;
            }
            let spread =
                rand::Rng::gen_range(&mut rand::thread_rng(), 0..=ADDR_ANSWER_SPREAD.as_secs());
            self.addr_answer = Some(AddrAnswer {
                entries,
                expires: now + ADDR_ANSWER_LIFETIME + Duration::from_secs(spread),
                book_len,
            });
        }
        let entries = self
            .addr_answer
            .as_ref()
            .expect("set above")
            .entries
            .clone();
        actions.push(Action::Send(id, Message::Addr(entries)));
    }

    /// Adds a peer's `addr` entries to the book, as many as its token
    /// bucket allows; the rest are dropped and counted.
    pub(super) fn on_addr(&mut self, id: PeerId, entries: Vec<AddrEntry>, now: Instant) {
        let peer = self.peers.get_mut(&id).expect("checked");
        let source = peer.addr.ip();
        let admitted = peer.addr_limit.admit(entries.len(), now);
        if admitted < entries.len() {
            let dropped = entries.len() - admitted;
            self.counters.addr_rate_limited += dropped as u64;
            tracing::debug!(peer = id, dropped, "addr rate limit: addresses dropped");
        }
        let now_unix = unix_now();
        for entry in entries.into_iter().take(admitted) {
            self.addrbook
                .add_new(entry.addr, source, entry.time, now_unix);
        }
    }
}
