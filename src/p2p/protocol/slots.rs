//! Connection slots: admitting and evicting inbound peers, dialing outbound and manual peers, and forgetting peers that leave.

use super::*;

impl Protocol {
    /// A connection was established (`dialed` is the address we dialed).
    pub fn on_connected(
        &mut self,
        id: PeerId,
        addr: SocketAddr,
        dialed: Option<SocketAddr>,
        now: Instant,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let inbound = dialed.is_none();
        // A dial the operator also asked for (`add_peer`) while it was
        // under way as a feeler is theirs to keep.
        let feeler = dialed.is_some_and(|d| {
            self.dialing.remove(&d);
            self.feeler_dials.remove(&d) && !self.manual.contains_key(&d)
        });
        if inbound {
            let inbound_count = self.peers.values().filter(|p| p.inbound).count();
            if self.is_discouraged(&addr.ip(), now) {
                actions.push(Action::Disconnect(id, "discouraged"));
                return actions;
            }
            if inbound_count >= MAX_INBOUND {
                // Full: make room by evicting as Bitcoin Core does, so that
                // squatters cannot keep newcomers out.
                let Some(victim) = self.inbound_to_evict() else {
                    actions.push(Action::Disconnect(id, "too_many_inbound"));
                    return actions;
                };
                tracing::info!(peer = victim, newcomer = %addr, "inbound slots full: evicting a peer");
                self.counters.inbound_evictions += 1;
                actions.push(Action::Disconnect(victim, "evicted"));
                actions.extend(self.on_disconnected(victim, now));
            }
        }
        let group = NetGroup::of(addr.ip());
        self.peers.insert(
            id,
            Peer {
                addr,
                inbound,
                dialed,
                connected_at: now,
                version: None,
                got_verack: false,
                sent_version: false,
                send_headers: false,
                known: BoundedSet::default(),
                best_known: None,
                in_flight: HashMap::new(),
                arrived: HashSet::new(),
                getheaders_sent: None,
                answered_empty: false,
                not_found: BoundedSet::default(),
                block_notfound: 0,
                getdata: VecDeque::new(),
                getdata_queued: HashSet::new(),
                last_common: None,
                headers_sync: None,
                headers_retry_at: None,
                stalls: 0,
                window_hold: None,
                ping: None,
                last_ping_sent: now,
                answered_getaddr: false,
                answered_mempool: false,
                unconnecting_headers: 0,
                tx_in_flight: HashSet::new(),
                tx_announced: HashMap::new(),
                tx_to_request: VecDeque::new(),
                mempool_requested: false,
                group,
                keyed_group: self.addrbook.keyed_group(group),
                version_nonce: None,
                listen_addr: None,
                addr_limit: AddrRateLimit::new(now),
                min_ping: None,
                last_block_at: None,
                last_tx_at: None,
                feeler,
            },
        );
        if !inbound {
            let version = self.version_message(id);
            self.peers.get_mut(&id).expect("just inserted").sent_version = true;
            actions.push(Action::Send(id, version));
        }
        actions
    }

    /// The inbound peer to disconnect for a newcomer (see `eviction`).
    pub(super) fn inbound_to_evict(&self) -> Option<PeerId> {
        let candidates = self
            .peers
            .iter()
            .filter(|(_, p)| p.inbound)
            .map(|(id, p)| EvictionCandidate {
                id: *id,
                connected_at: p.connected_at,
                min_ping: p.min_ping,
                last_block_at: p.last_block_at,
                last_tx_at: p.last_tx_at,
                group: p.group,
                keyed_group: p.keyed_group,
            })
            .collect();
        select_peer_to_evict(candidates)
    }

    /// A dial attempt failed.
    pub fn on_connect_failed(&mut self, addr: SocketAddr, now: Instant) {
        self.dialing.remove(&addr);
        self.feeler_dials.remove(&addr);
        self.addrbook.mark_failed(addr, now);
        self.back_off_manual(addr, now);
    }

    pub fn on_disconnected(&mut self, id: PeerId, now: Instant) -> Vec<Action> {
        let Some(peer) = self.peers.remove(&id) else {
            return Vec::new();
        };
        tracing::info!(peer = id, addr = %peer.addr, "peer disconnected");
        if let Some(nonce) = peer.version_nonce {
            self.our_nonces.remove(&nonce);
        }
        for hash in peer.in_flight.keys() {
            self.in_flight.remove(hash);
        }
        // Its announcements: each goes to another announcer's queue unless
        // asked of one (its queue may have been the only one holding it),
        // or is forgotten with its last announcer.
        for txid in peer.tx_announced.keys() {
            let Some(request) = self.tx_requests.get_mut(txid) else {
                continue;
            };
            request.announcers.retain(|p| *p != id);
            if request.asked.is_some_and(|(p, _)| p == id) {
                request.asked = None;
            }
            if request.announcers.is_empty() {
                self.tx_requests.remove(txid);
            } else if request.asked.is_none() {
                requeue(&mut self.peers, txid, &request.announcers, now);
            }
        }
        if self.headers_request.is_some_and(|(p, _)| p == id) {
            self.headers_request = None;
        }
        self.orphans.erase_for_peer(id);
        if let Some(dialed) = peer.dialed {
            // Reconnect after a backoff, not at once; a feeler let go after
            // its handshake did nothing wrong.
            if !(peer.feeler && peer.handshaken()) {
                self.addrbook.mark_failed(dialed, now);
            }
            self.back_off_manual(dialed, now);
        }
        let mut actions = Vec::new();
        self.request_blocks(now, &mut actions);
        self.request_txs(now, &mut actions);
        actions
    }

    /// The operator asked to connect to `addr` (and keep connected).
    pub fn add_peer(&mut self, addr: SocketAddr, now: Instant) -> Vec<Action> {
        self.manual.insert(addr, now);
        self.manual_failures.remove(&addr);
        let mut actions = Vec::new();
        self.connect_outbound(now, &mut actions);
        actions
    }

    /// The operator asked to drop `addr`: no longer a manual peer, and any
    /// connection to it is closed.
    pub fn remove_peer(&mut self, addr: SocketAddr) -> Vec<Action> {
        self.manual.remove(&addr);
        self.peers
            .iter()
            .filter(|(_, p)| p.addr == addr || p.dialed == Some(addr))
            .map(|(id, _)| Action::Disconnect(*id, "removed_by_operator"))
            .collect()
    }

    /// Remembers that dialing `addr` reached ourselves: it is not dialed
    /// again for `SELF_CONNECTION_BACKOFF`.
    pub(super) fn remember_self_address(&mut self, addr: SocketAddr, now: Instant) {
        if self.self_addrs.len() >= MAX_SELF_ADDRESSES && !self.self_addrs.contains_key(&addr) {
            if let Some(oldest) = self
                .self_addrs
                .iter()
                .min_by_key(|(a, until)| (**until, **a))
                .map(|(a, _)| *a)
            {
                self.self_addrs.remove(&oldest);
            }
        }
        self.self_addrs.insert(addr, now + SELF_CONNECTION_BACKOFF);
    }

    /// Dials manual peers that are due, then addresses from the book up to
    /// `TARGET_OUTBOUND`, one per network group (a group that is not
    /// routable, loopback or private on regtest, is not limited), never an
    /// address we are connected to (inbound peers included, by the address
    /// they listen on) or that turned out to be ourselves. With those slots
    /// full, a feeler when one is due (`FEELER_INTERVAL`), under the same
    /// rules but the group's.
    pub(super) fn connect_outbound(&mut self, now: Instant, actions: &mut Vec<Action>) {
        self.self_addrs.retain(|_, until| *until > now);
        let connected: HashSet<SocketAddr> = self.peers.values().filter_map(|p| p.dialed).collect();
        for (addr, next) in &mut self.manual {
            if !connected.contains(addr)
                && !self.dialing.contains(addr)
                && *next <= now
                && !self.self_addrs.contains_key(addr)
            {
                self.dialing.insert(*addr);
                actions.push(Action::Connect(*addr));
            }
        }
        let peer_addrs: HashSet<SocketAddr> = self
            .peers
            .values()
            .flat_map(|p| [Some(p.addr), p.listen_addr])
            .flatten()
            .collect();
        self.settle_collisions(&connected, &peer_addrs);
        if !self.discover {
            return;
        }
        let mut outbound = self
            .peers
            .values()
            .filter(|p| !p.inbound && !p.feeler)
            .count()
            + self.dialing.len()
            - self.feeler_dials.len();
        let feeler_due = now >= self.next_feeler;
        if outbound >= TARGET_OUTBOUND && !feeler_due {
            return;
        }
        let mut groups: HashSet<NetGroup> = self
            .peers
            .values()
            .filter(|p| !p.inbound)
            .map(|p| p.group)
            .chain(self.dialing.iter().map(|a| NetGroup::of(a.ip())))
            .filter(|g| g.is_routable())
            .collect();
        let now_unix = unix_now();
        while outbound < TARGET_OUTBOUND {
            let (book, barred) = self.book_and_barred(&connected, &peer_addrs, now);
            let picked = book.select(now, now_unix, |a| {
                barred.contains(a) || groups.contains(&NetGroup::of(a.ip()))
            });
            let Some(addr) = picked else {
                break;
            };
            let group = NetGroup::of(addr.ip());
            if group.is_routable() {
                groups.insert(group);
            }
            self.addrbook.mark_attempt(addr, now_unix);
            self.dialing.insert(addr);
            actions.push(Action::Connect(addr));
            outbound += 1;
        }
        if outbound < TARGET_OUTBOUND || !feeler_due {
            return;
        }
        self.next_feeler = next_feeler_after(now);
        let feeling = !self.feeler_dials.is_empty() || self.peers.values().any(|p| p.feeler);
        if feeling {
            return;
        }
        let holders = self.addrbook.collision_holders();
        let (book, barred) = self.book_and_barred(&connected, &peer_addrs, now);
        let picked = match holders.into_iter().find(|a| !barred.contains(a)) {
            Some(holder) => Some(holder),
            None => book.select_new(now, now_unix, |a| barred.contains(a)),
        };
        if let Some(addr) = picked {
            tracing::debug!(%addr, "feeler: testing an address");
            self.addrbook.mark_attempt(addr, now_unix);
            self.dialing.insert(addr);
            self.feeler_dials.insert(addr);
            actions.push(Action::Connect(addr));
        }
    }

    /// The address book, beside what it may not dial now (`Barred`).
    fn book_and_barred<'a>(
        &'a mut self,
        connected: &'a HashSet<SocketAddr>,
        peer_addrs: &'a HashSet<SocketAddr>,
        now: Instant,
    ) -> (&'a mut AddrBook, Barred<'a>) {
        let Protocol {
            addrbook,
            dialing,
            manual,
            self_addrs,
            discouraged,
            listen_port,
            ..
        } = self;
        let barred = Barred {
            connected,
            peer_addrs,
            dialing,
            manual,
            self_addrs,
            discouraged,
            listen_port: *listen_port,
            now,
        };
        (addrbook, barred)
    }

    /// Settles the address book's tried collisions whose test is over
    /// (every tick, whether or not feelers run). A holder we are connected
    /// to now answers: it is recorded as good first, so it keeps its slot
    /// (Bitcoin Core's `AlreadyConnectedToAddress` case).
    fn settle_collisions(
        &mut self,
        connected: &HashSet<SocketAddr>,
        peer_addrs: &HashSet<SocketAddr>,
    ) {
        if self.addrbook.collision_count() == 0 {
            return;
        }
        let now_unix = unix_now();
        for holder in self.addrbook.collision_holders() {
            if connected.contains(&holder) || peer_addrs.contains(&holder) {
                self.addrbook.mark_good(holder, now_unix);
            }
        }
        if self.addrbook.resolve_collisions(now_unix) {
            self.addrbook_unsaved_tried = true;
        }
    }

    /// Pushes back the next attempt to a manual peer after a failure.
    pub(super) fn back_off_manual(&mut self, addr: SocketAddr, now: Instant) {
        if let Some(next) = self.manual.get_mut(&addr) {
            let failures = self.manual_failures.entry(addr).or_insert(0);
            *failures = (*failures + 1).min(6);
            *next = now + MANUAL_RETRY_BASE * (1 << *failures);
        }
    }
}

/// When the feeler after one due at `now` is: `FEELER_INTERVAL` on average,
/// drawn evenly from half of it to one and a half times it, so that
/// feelers keep no fixed beat an observer could tell the node by (Bitcoin
/// Core draws them from an exponential distribution).
pub(super) fn next_feeler_after(now: Instant) -> Instant {
    use rand::Rng;
    now + rand::thread_rng().gen_range(FEELER_INTERVAL / 2..=FEELER_INTERVAL * 3 / 2)
}

/// The addresses the node may not dial from its book now: one it is
/// connected to (inbound peers included, by the address they listen on),
/// is dialing, keeps as a `--peer`, found to be itself, discourages, or
/// its own listening port on loopback.
struct Barred<'a> {
    connected: &'a HashSet<SocketAddr>,
    peer_addrs: &'a HashSet<SocketAddr>,
    dialing: &'a HashSet<SocketAddr>,
    manual: &'a HashMap<SocketAddr, Instant>,
    self_addrs: &'a HashMap<SocketAddr, Instant>,
    discouraged: &'a misbehaviour::Discouraged,
    listen_port: u16,
    now: Instant,
}

impl Barred<'_> {
    fn contains(&self, a: &SocketAddr) -> bool {
        self.connected.contains(a)
            || self.peer_addrs.contains(a)
            || self.dialing.contains(a)
            || self.manual.contains_key(a)
            || self.self_addrs.contains_key(a)
            || self.discouraged.contains(&a.ip(), self.now)
            || (a.ip().is_loopback() && a.port() == self.listen_port)
    }
}
