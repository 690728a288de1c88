//! Addresses: answering `getaddr` once per connection from the address
//! book, and taking `addr` entries within the peer's rate limit.

use super::*;

impl Protocol {
    /// Answers the first `getaddr` of a connection with a sample of the book.
    pub(super) fn on_getaddr(&mut self, id: PeerId, actions: &mut Vec<Action>) {
        let peer = self.peers.get_mut(&id).expect("checked");
        if peer.answered_getaddr {
            return;
        }
        peer.answered_getaddr = true;
        let entries = self
            .addrbook
            .sample(MAX_ADDR_ENTRIES, unix_now())
            .into_iter()
            .map(|(addr, time)| AddrEntry {
                time,
                services: SERVICE_NETWORK,
                addr,
            })
            .collect();
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
