//! Misbehaviour: counting, disconnecting and discouraging peers that break the rules.

use super::*;

impl Protocol {
    pub(super) fn misbehaving(
        &mut self,
        id: PeerId,
        reason: &'static str,
        actions: &mut Vec<Action>,
    ) {
        let ip = self.peers.get(&id).map(|peer| {
            tracing::info!(peer = id, addr = %peer.addr, reason, "peer misbehaved: disconnecting");
            peer.addr.ip()
        });
        self.record_misbehaviour(ip, reason);
        actions.push(Action::Disconnect(id, reason));
    }

    /// Counts `reason` and discourages `ip`, if known. As Bitcoin Core:
    /// local peers are disconnected but never discouraged, or every local
    /// peer would be refused.
    pub(super) fn record_misbehaviour(&mut self, ip: Option<IpAddr>, reason: &'static str) {
        *self
            .counters
            .misbehaviour
            .entry(reason.to_string())
            .or_default() += 1;
        if let Some(ip) = ip.filter(|ip| !is_local(ip)) {
            self.discouraged
                .insert(ip, Instant::now() + DISCOURAGE_DURATION);
        }
    }

    /// A socket task reported a framing error or a malformed message.
    pub fn on_violation(&mut self, id: PeerId, reason: &'static str) -> Vec<Action> {
        let mut actions = Vec::new();
        self.misbehaving(id, reason, &mut actions);
        actions
    }

    pub fn on_unknown_command(&mut self, id: PeerId, command: &str) {
        self.counters.unknown_commands += 1;
        tracing::debug!(peer = id, command, "ignoring unknown command");
    }

    pub fn is_discouraged(&self, ip: &IpAddr, now: Instant) -> bool {
        self.discouraged.contains(ip, now)
    }
}

/// Addresses refused after misbehaving, each until its time is up: at most
/// `MAX_DISCOURAGED`, the one whose time ends soonest forgotten first. Every
/// address is refused for `DISCOURAGE_DURATION` from when it misbehaved,
/// so that is the oldest, and the times in `order` never decrease. A flood
/// of new addresses (an IPv6 /64 holds 2^64 of them) costs a bounded table,
/// as Bitcoin Core's rolling filter of 50 000, and expiring costs the
/// entries that expire, not a walk of the table. `until` and `order` hold
/// the same addresses.
#[derive(Default)]
pub(super) struct Discouraged {
    until: HashMap<IpAddr, Instant>,
    /// When each entry ends, in the order they were made.
    order: VecDeque<(Instant, IpAddr)>,
}

impl Discouraged {
    /// Refuses `ip` until `until`. An address already refused keeps its
    /// time: another violation (a second connection, work judged after it
    /// left) does not add an entry, so the bound counts addresses.
    pub(super) fn insert(&mut self, ip: IpAddr, until: Instant) {
        if self.until.contains_key(&ip) {
            return;
        }
        self.until.insert(ip, until);
        self.order.push_back((until, ip));
        while self.order.len() > MAX_DISCOURAGED {
            self.forget_oldest();
        }
    }

    pub(super) fn contains(&self, ip: &IpAddr, now: Instant) -> bool {
        self.until.get(ip).is_some_and(|until| *until > now)
    }

    /// Forgets the entries whose time is up at `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        while self.order.front().is_some_and(|(until, _)| *until <= now) {
            self.forget_oldest();
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.until.len()
    }

    fn forget_oldest(&mut self) {
        if let Some((_, ip)) = self.order.pop_front() {
            self.until.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0xC633_0000 + n))
    }

    #[test]
    fn discouraged_addresses_are_bounded_and_the_oldest_go_first() {
        let start = Instant::now();
        let mut table = Discouraged::default();
        let extra = 10;
        for n in 0..(MAX_DISCOURAGED + extra) as u32 {
            table.insert(
                ip(n),
                start + DISCOURAGE_DURATION + Duration::from_millis(n.into()),
            );
        }
        assert_eq!(table.len(), MAX_DISCOURAGED);
        assert!(!table.contains(&ip(0), start), "the oldest is forgotten");
        assert!(!table.contains(&ip(extra as u32 - 1), start));
        assert!(table.contains(&ip(extra as u32), start));
        assert!(table.contains(&ip((MAX_DISCOURAGED + extra - 1) as u32), start));
    }

    #[test]
    fn an_address_discouraged_again_keeps_one_entry_and_its_time() {
        let start = Instant::now();
        let mut table = Discouraged::default();
        let first = start + Duration::from_secs(10);
        table.insert(ip(1), first);
        table.insert(ip(2), first + Duration::from_secs(1));
        // A thousand more violations from the first address: still one
        // entry, so they cannot push the second one out of a full table.
        for n in 0..1_000 {
            table.insert(ip(1), first + Duration::from_secs(20 + n));
        }
        assert_eq!(table.order.len(), 2);
        assert!(table.contains(&ip(1), first - Duration::from_secs(1)));
        table.expire(first);
        assert!(!table.contains(&ip(1), first));
        assert!(table.contains(&ip(2), first));
        assert_eq!(table.len(), 1);
        table.expire(first + Duration::from_secs(1));
        assert_eq!(table.len(), 0);
        assert_eq!(table.order.len(), 0);
    }
}
