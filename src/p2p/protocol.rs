//! The peer-to-peer protocol as a state machine without I/O: it consumes
//! events (a peer connected, a message arrived, a peer left, time passed)
//! and returns actions (send, disconnect, connect). The socket tasks in
//! `connection` only move frames; every rule about who may send what and
//! when lives here.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::chain::{unix_now, BlockOutcome, Chain, HeaderRejection};
use crate::consensus::hash::{BlockHash, Hash256};
use crate::consensus::params::Network;
use crate::consensus::pow::work_from_compact;
use crate::encoding::Encode;
use crate::mempool::{Mempool, MempoolError};
use crate::wire::constants::*;
use crate::wire::message::{AddrEntry, GetHeaders, InvItem, InvKind, Message, Version};

use super::addr_rate::AddrRateLimit;
use super::addrbook::AddrBook;
use super::eviction::{select_peer_to_evict, EvictionCandidate};
use super::headers_sync::{HeadersSync, SyncStep, TIME_HISTORY};
use super::netgroup::NetGroup;

pub type PeerId = u64;

/// Blocks requested from one peer at a time.
pub const MAX_BLOCKS_IN_FLIGHT_PER_PEER: usize = 16;
/// How far past the active tip blocks are fetched: bounds memory and disk
/// spent on blocks that cannot be connected yet.
pub const BLOCK_DOWNLOAD_WINDOW: u32 = 1024;
/// A requested block that has not arrived by then is asked of another peer.
pub const BLOCK_STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A peer that stalls this many requests is disconnected. Each block it
/// delivers as asked takes one stall off, so an honest peer's rare stall is
/// forgotten.
pub const MAX_STALLS: u32 = 3;
/// `getdata` items waiting per peer; more in the meantime are ignored. An
/// honest peer has at most 16 blocks and 100 transactions in flight.
pub const MAX_PENDING_GETDATA: usize = 5_000;
/// `getdata` items answered per peer per round of the protocol thread, so
/// one peer's requests cannot hold the thread.
pub const MAX_GETDATA_PER_TURN: usize = 64;
/// A peer that answers `notfound` for this many blocks it announced (on the
/// chain its headers claimed) is disconnected: it cannot serve what it says
/// it has. Each such block is asked of another peer at once.
pub const MAX_BLOCK_NOTFOUND: u32 = 8;
/// A `getheaders` unanswered for this long is sent again (to any peer).
pub const HEADERS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Outbound connections the node keeps.
pub const TARGET_OUTBOUND: usize = 8;
/// Inbound connections the node accepts.
pub const MAX_INBOUND: usize = 117;
/// How long a misbehaving address is refused.
pub const DISCOURAGE_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// Inventory hashes remembered per peer, so nothing is announced back to
/// where it came from; the oldest are forgotten first.
pub const MAX_KNOWN_INVENTORY: usize = 50_000;
/// How often sync progress is logged while catching up.
pub const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(5);
/// Transactions requested from one peer at a time.
pub const MAX_TX_IN_FLIGHT_PER_PEER: usize = 100;
/// Transaction announcements from one peer waiting to be requested; more
/// are ignored, so an announcing peer cannot grow our memory.
pub const MAX_PEER_TX_ANNOUNCEMENTS: usize = 5_000;
/// A requested transaction not delivered by then is asked of another peer
/// that announced it.
pub const TX_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Rejected txids remembered, so they are not requested again.
pub const MAX_RECENT_REJECTS: usize = 50_000;
/// After a peer's header or block was refused as too far ahead of our clock,
/// its headers are asked for again this much later (nothing was cached as
/// invalid, so the same header is accepted once the clock has caught up).
pub const TIME_TOO_NEW_RETRY: Duration = Duration::from_secs(30);

/// How long an address that turned out to be ourselves is not dialed.
pub const SELF_CONNECTION_BACKOFF: Duration = Duration::from_secs(60 * 60);
/// Addresses of ourselves remembered at once (a node has a few interfaces;
/// past this the one remembered longest is forgotten first).
pub const MAX_SELF_ADDRESSES: usize = 16;

/// First wait before redialing a `--peer` that failed or left; doubles
/// with every failure up to 64 times this.
pub const MANUAL_RETRY_BASE: Duration = Duration::from_millis(500);
/// Longest user agent we send.
pub const USER_AGENT: &str = concat!("/chaincore:", env!("CARGO_PKG_VERSION"), "/");

/// Something the I/O layer must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(PeerId, Message),
    Disconnect(PeerId, &'static str),
    Connect(SocketAddr),
}

/// A set that forgets its oldest members past a bound.
#[derive(Debug, Default)]
struct BoundedSet {
    set: HashSet<Hash256>,
    order: VecDeque<Hash256>,
}

impl BoundedSet {
    fn insert(&mut self, hash: Hash256) {
        self.insert_bounded(hash, MAX_KNOWN_INVENTORY);
    }

    fn insert_bounded(&mut self, hash: Hash256, bound: usize) {
        if self.set.insert(hash) {
            self.order.push_back(hash);
            if self.order.len() > bound {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn contains(&self, hash: &Hash256) -> bool {
        self.set.contains(hash)
    }
}

#[derive(Debug)]
struct Peer {
    addr: SocketAddr,
    inbound: bool,
    /// The address we dialed, for outbound peers (reconnection, addr book).
    dialed: Option<SocketAddr>,
    connected_at: Instant,
    version: Option<Version>,
    got_verack: bool,
    sent_version: bool,
    send_headers: bool,
    known: BoundedSet,
    /// Best block the peer is known to have.
    best_known: Option<BlockHash>,
    in_flight: HashMap<BlockHash, Instant>,
    /// Requested blocks that arrived and wait for their turn in our queue.
    arrived: HashSet<BlockHash>,
    /// Blocks the peer said it does not have: never asked of it again.
    not_found: BoundedSet,
    /// How many blocks the peer answered `notfound` for.
    block_notfound: u32,
    /// `getdata` items waiting to be served, in order, and as a set.
    getdata: VecDeque<InvItem>,
    getdata_queued: HashSet<InvItem>,
    /// The last block we know we have in common with the peer's best chain,
    /// where the next download search starts (see `Chain::blocks_to_download`).
    last_common: Option<BlockHash>,
    /// A headers pre-sync in progress: the peer's chain has not yet shown
    /// enough work to be indexed.
    headers_sync: Option<Box<HeadersSync>>,
    /// When to ask the peer for headers again after a time-too-new refusal.
    headers_retry_at: Option<Instant>,
    stalls: u32,
    ping: Option<(u64, Instant)>,
    last_ping_sent: Instant,
    answered_getaddr: bool,
    /// Transactions asked of this peer and not delivered yet.
    tx_in_flight: HashSet<Hash256>,
    /// Transactions this peer announced that we still want.
    tx_announced: usize,
    /// Whether we asked this peer for its mempool (once caught up with it).
    mempool_requested: bool,
    /// The network group of `addr`.
    group: NetGroup,
    /// `group` hashed with the address book's key, for eviction.
    keyed_group: u64,
    /// The nonce of the `version` we sent the peer.
    version_nonce: Option<u64>,
    /// Where an inbound peer says it listens (its IP, its `listen port`).
    listen_addr: Option<SocketAddr>,
    /// Addresses the peer may still send (`addr` rate limit).
    addr_limit: AddrRateLimit,
    /// Lowest ping round trip measured.
    min_ping: Option<Duration>,
    /// When the peer last sent a block new to us.
    last_block_at: Option<Instant>,
    /// When the peer last sent a transaction our pool accepted.
    last_tx_at: Option<Instant>,
}

/// A transaction we want: who announced it and whom we asked.
#[derive(Debug, Default)]
struct TxRequest {
    announcers: Vec<PeerId>,
    asked: Option<(PeerId, Instant)>,
}

impl Peer {
    fn ready(&self) -> bool {
        self.version.is_some() && self.got_verack
    }
}

/// Sync progress, for logs and the status endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct SyncProgress {
    pub header_height: u32,
    pub block_height: u32,
    /// Blocks connected per second over the last interval.
    pub blocks_per_sec: f64,
    pub percent: f64,
    pub peers: usize,
    pub blocks_in_flight: usize,
}

/// Counters of what peers did wrong and what we ignored.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProtocolCounters {
    pub misbehaviour: HashMap<String, u64>,
    pub unknown_commands: u64,
    /// Addresses of `addr` messages dropped by the per-peer rate limit.
    pub addr_rate_limited: u64,
    /// Inbound peers disconnected to make room for a newcomer.
    pub inbound_evictions: u64,
}

pub struct Protocol {
    chain: Arc<Mutex<Chain>>,
    mempool: Arc<Mutex<Mempool>>,
    tx_requests: HashMap<Hash256, TxRequest>,
    recent_rejects: BoundedSet,
    network: Network,
    listen_port: u16,
    peers: HashMap<PeerId, Peer>,
    /// Nonces of the `version` messages we sent, and to which peer:
    /// receiving one back means we connected to ourselves. An entry leaves
    /// with its peer, so this holds at most one per connection.
    our_nonces: HashMap<u64, PeerId>,
    /// Addresses that turned out to be ourselves, and until when they are
    /// not dialed (at most `MAX_SELF_ADDRESSES`).
    self_addrs: HashMap<SocketAddr, Instant>,
    /// Which peer each requested block was asked of.
    in_flight: HashMap<BlockHash, PeerId>,
    /// When we last sent `getheaders`, and to whom.
    headers_request: Option<(PeerId, Instant)>,
    addrbook: AddrBook,
    /// Peers given with `--peer`: always reconnected, with backoff; the
    /// value is when the next attempt is due.
    manual: HashMap<SocketAddr, Instant>,
    manual_failures: HashMap<SocketAddr, u32>,
    /// Whether to dial addresses from the address book (`--connect-only`
    /// turns it off).
    discover: bool,
    /// Addresses being dialed right now.
    dialing: HashSet<SocketAddr>,
    discouraged: HashMap<IpAddr, Instant>,
    announced_tip: BlockHash,
    counters: ProtocolCounters,
    progress: SyncProgress,
    last_progress: (Instant, u32),
    last_addrbook_save: Instant,
}

fn is_local(ip: &IpAddr) -> bool {
    ip.is_loopback()
}

impl Protocol {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        chain: Arc<Mutex<Chain>>,
        mempool: Arc<Mutex<Mempool>>,
        network: Network,
        listen_port: u16,
        addrbook: AddrBook,
        manual: Vec<SocketAddr>,
        discover: bool,
        now: Instant,
    ) -> Protocol {
        let (announced_tip, height) = {
            let chain = chain.lock().expect("chain lock");
            (chain.tip().hash, chain.height())
        };
        Protocol {
            chain,
            mempool,
            tx_requests: HashMap::new(),
            recent_rejects: BoundedSet::default(),
            network,
            listen_port,
            peers: HashMap::new(),
            our_nonces: HashMap::new(),
            self_addrs: HashMap::new(),
            in_flight: HashMap::new(),
            headers_request: None,
            addrbook,
            manual: manual.into_iter().map(|a| (a, now)).collect(),
            manual_failures: HashMap::new(),
            discover,
            dialing: HashSet::new(),
            discouraged: HashMap::new(),
            announced_tip,
            counters: ProtocolCounters::default(),
            progress: SyncProgress::default(),
            last_progress: (now, height),
            last_addrbook_save: now,
        }
    }

    pub fn progress(&self) -> SyncProgress {
        self.progress
    }

    pub fn counters(&self) -> &ProtocolCounters {
        &self.counters
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Peers and what we know of them, for the API.
    pub fn peer_summaries(&self) -> Vec<PeerSummary> {
        let mut out: Vec<PeerSummary> = self
            .peers
            .iter()
            .map(|(id, p)| PeerSummary {
                id: *id,
                addr: p.addr,
                inbound: p.inbound,
                ready: p.ready(),
                user_agent: p.version.as_ref().map(|v| v.user_agent.clone()),
                start_height: p.version.as_ref().map(|v| v.start_height),
                blocks_in_flight: p.in_flight.len(),
            })
            .collect();
        out.sort_by_key(|p| p.id);
        out
    }

    pub fn save_addrbook(&self) {
        if let Err(e) = self.addrbook.save() {
            tracing::warn!(error = %e, "could not save the address book");
        }
    }

    fn misbehaving(&mut self, id: PeerId, reason: &'static str, actions: &mut Vec<Action>) {
        *self
            .counters
            .misbehaviour
            .entry(reason.to_string())
            .or_default() += 1;
        if let Some(peer) = self.peers.get(&id) {
            let ip = peer.addr.ip();
            tracing::info!(peer = id, addr = %peer.addr, reason, "peer misbehaved: disconnecting");
            // As Bitcoin Core: local peers are disconnected but never
            // discouraged, or every local peer would be refused.
            if !is_local(&ip) {
                self.discouraged
                    .insert(ip, Instant::now() + DISCOURAGE_DURATION);
            }
        }
        actions.push(Action::Disconnect(id, reason));
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
        self.discouraged.get(ip).is_some_and(|until| *until > now)
    }

    /// Our `version` for peer `id`; the nonce is remembered for an outbound
    /// peer (as in Core: a nonce we sent to an inbound peer coming back
    /// proves nothing but that the peer passed it on).
    fn version_message(&mut self, id: PeerId) -> Message {
        let nonce = rand::random::<u64>();
        if let Some(peer) = self.peers.get_mut(&id).filter(|p| !p.inbound) {
            if let Some(old) = peer.version_nonce.replace(nonce) {
                self.our_nonces.remove(&old);
            }
            self.our_nonces.insert(nonce, id);
        }
        let start_height = self.chain.lock().expect("chain lock").height();
        Message::Version(Version {
            protocol_version: PROTOCOL_VERSION,
            services: SERVICE_NETWORK,
            timestamp: u64::from(unix_now()),
            start_height,
            nonce,
            listen_port: self.listen_port,
            user_agent: USER_AGENT.to_string(),
        })
    }

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
        if let Some(d) = dialed {
            self.dialing.remove(&d);
        }
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
                not_found: BoundedSet::default(),
                block_notfound: 0,
                getdata: VecDeque::new(),
                getdata_queued: HashSet::new(),
                last_common: None,
                headers_sync: None,
                headers_retry_at: None,
                stalls: 0,
                ping: None,
                last_ping_sent: now,
                answered_getaddr: false,
                tx_in_flight: HashSet::new(),
                tx_announced: 0,
                mempool_requested: false,
                group,
                keyed_group: self.addrbook.keyed_group(group),
                version_nonce: None,
                listen_addr: None,
                addr_limit: AddrRateLimit::new(now),
                min_ping: None,
                last_block_at: None,
                last_tx_at: None,
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
    fn inbound_to_evict(&self) -> Option<PeerId> {
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
        self.tx_requests.retain(|_, request| {
            request.announcers.retain(|p| *p != id);
            if request.asked.is_some_and(|(p, _)| p == id) {
                request.asked = None;
            }
            !request.announcers.is_empty()
        });
        if self.headers_request.is_some_and(|(p, _)| p == id) {
            self.headers_request = None;
        }
        if let Some(dialed) = peer.dialed {
            // Reconnect after a backoff, not at once.
            self.addrbook.mark_failed(dialed, now);
            self.back_off_manual(dialed, now);
        }
        let mut actions = Vec::new();
        self.request_blocks(now, &mut actions);
        self.request_txs(now, &mut actions);
        actions
    }

    pub fn on_message(&mut self, id: PeerId, message: Message, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(peer) = self.peers.get(&id) else {
            return actions;
        };
        let ready = peer.ready();
        match message {
            Message::Version(version) => self.on_version(id, version, now, &mut actions),
            Message::Verack => {
                let peer = self.peers.get_mut(&id).expect("checked");
                if peer.got_verack || !peer.sent_version {
                    self.misbehaving(id, "unexpected_verack", &mut actions);
                } else {
                    peer.got_verack = true;
                    if peer.ready() {
                        self.on_handshake(id, now, &mut actions);
                    }
                }
            }
            _ if !ready => self.misbehaving(id, "message_before_handshake", &mut actions),
            Message::Ping(nonce) => actions.push(Action::Send(id, Message::Pong(nonce))),
            Message::Pong(nonce) => {
                let peer = self.peers.get_mut(&id).expect("checked");
                if let Some((_, sent)) = peer.ping.filter(|(n, _)| *n == nonce) {
                    peer.ping = None;
                    let rtt = now.saturating_duration_since(sent);
                    peer.min_ping = Some(peer.min_ping.map_or(rtt, |m| m.min(rtt)));
                }
            }
            Message::GetAddr => {
                let peer = self.peers.get_mut(&id).expect("checked");
                if !peer.answered_getaddr {
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
            }
            Message::Addr(entries) => {
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
            Message::Inv(items) => self.on_inv(id, items, &mut actions),
            Message::GetData(items) => self.on_getdata(id, items),
            Message::NotFound(items) => self.on_notfound(id, items, now, &mut actions),
            Message::GetHeaders(request) => {
                let headers = self.chain.lock().expect("chain lock").headers_after(
                    &request.locator,
                    &request.stop,
                    MAX_HEADERS,
                );
                if let Some(last) = headers.last() {
                    self.peers
                        .get_mut(&id)
                        .expect("checked")
                        .known
                        .insert(last.hash());
                }
                actions.push(Action::Send(id, Message::Headers(headers)));
            }
            Message::Headers(headers) => self.on_headers(id, headers, now, &mut actions),
            Message::Block(block) => self.on_block(id, *block, now, &mut actions),
            Message::SendHeaders => {
                self.peers.get_mut(&id).expect("checked").send_headers = true;
            }
            Message::Tx(tx) => self.on_tx(id, *tx, now, &mut actions),
            Message::Mempool => {
                let txids = {
                    let chain = self.chain.lock().expect("chain lock");
                    let mut pool = self.mempool.lock().expect("mempool lock");
                    pool.catch_up(&chain);
                    pool.txids()
                };
                let peer = self.peers.get_mut(&id).expect("checked");
                let items: Vec<InvItem> = txids
                    .into_iter()
                    .filter(|t| !peer.known.contains(t))
                    .map(|hash| InvItem {
                        kind: InvKind::Tx,
                        hash,
                    })
                    .collect();
                for item in &items {
                    peer.known.insert(item.hash);
                }
                for chunk in items.chunks(MAX_INV_ENTRIES) {
                    actions.push(Action::Send(id, Message::Inv(chunk.to_vec())));
                }
            }
        }
        self.announce_tip(&mut actions);
        self.announce_txs(&mut actions);
        self.request_mempools(&mut actions);
        actions
    }

    /// A peer lacks what we asked for. A block goes to another peer at once
    /// and is never asked of this one again; a peer that keeps failing to
    /// serve the chain it announced is dropped. A transaction is asked of
    /// its next announcer.
    fn on_notfound(
        &mut self,
        id: PeerId,
        items: Vec<InvItem>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let peer = self.peers.get_mut(&id).expect("checked");
        for item in items {
            match item.kind {
                InvKind::Block => {
                    if peer.in_flight.remove(&item.hash).is_some() {
                        self.in_flight.remove(&item.hash);
                        peer.arrived.remove(&item.hash);
                        peer.not_found.insert(item.hash);
                        peer.block_notfound += 1;
                    }
                }
                InvKind::Tx => {
                    if peer.tx_in_flight.remove(&item.hash) {
                        if let Some(request) = self.tx_requests.get_mut(&item.hash) {
                            request.announcers.retain(|p| *p != id);
                            request.asked = None;
                            peer.tx_announced = peer.tx_announced.saturating_sub(1);
                        }
                    }
                }
                InvKind::Other(_) => {}
            }
        }
        let failures = peer.block_notfound;
        self.tx_requests.retain(|_, r| !r.announcers.is_empty());
        if failures >= MAX_BLOCK_NOTFOUND {
            *self
                .counters
                .misbehaviour
                .entry("block_notfound".to_string())
                .or_default() += 1;
            tracing::info!(
                peer = id,
                failures,
                "peer cannot serve the blocks it announced"
            );
            actions.push(Action::Disconnect(id, "block_notfound"));
            return;
        }
        self.request_blocks(now, actions);
        self.request_txs(now, actions);
    }

    /// Asks each peer once for its mempool, as soon as our chain has caught
    /// up with it: earlier, its transactions would spend blocks we lack.
    fn request_mempools(&mut self, actions: &mut Vec<Action>) {
        let (synced, height) = {
            let chain = self.chain.lock().expect("chain lock");
            (chain.best_header().0 == chain.tip().hash, chain.height())
        };
        if !synced {
            return;
        }
        for (id, peer) in self.peers.iter_mut() {
            let caught_up = peer
                .version
                .as_ref()
                .is_some_and(|v| v.start_height <= height);
            if peer.ready() && !peer.mempool_requested && caught_up {
                peer.mempool_requested = true;
                actions.push(Action::Send(*id, Message::Mempool));
            }
        }
    }

    fn on_tx(
        &mut self,
        id: PeerId,
        tx: crate::consensus::transaction::Transaction,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let txid = tx.txid();
        let peer = self.peers.get_mut(&id).expect("checked");
        peer.known.insert(txid);
        peer.tx_in_flight.remove(&txid);
        if let Some(request) = self.tx_requests.remove(&txid) {
            for announcer in request.announcers {
                if let Some(p) = self.peers.get_mut(&announcer) {
                    p.tx_announced = p.tx_announced.saturating_sub(1);
                }
            }
        }
        let result = {
            let chain = self.chain.lock().expect("chain lock");
            let mut pool = self.mempool.lock().expect("mempool lock");
            pool.accept(&chain, tx)
        };
        match result {
            Ok(_) => {
                tracing::debug!(peer = id, %txid, "transaction accepted");
                if let Some(peer) = self.peers.get_mut(&id) {
                    peer.last_tx_at = Some(now);
                }
            }
            // The parent may still be on its way; ask again when announced.
            Err(MempoolError::MissingInput(_))
            | Err(MempoolError::AlreadyInPool(_))
            | Err(MempoolError::AlreadyConfirmed(_))
            | Err(MempoolError::Store(_)) => {}
            Err(error) => {
                tracing::debug!(peer = id, %txid, %error, "transaction rejected");
                self.recent_rejects.insert_bounded(txid, MAX_RECENT_REJECTS);
            }
        }
        self.request_txs(now, actions);
    }

    /// Asks announcers for the transactions we want, within per-peer caps.
    fn request_txs(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let mut batches: HashMap<PeerId, Vec<InvItem>> = HashMap::new();
        for (txid, request) in &mut self.tx_requests {
            if request.asked.is_some() {
                continue;
            }
            let chosen = request.announcers.iter().copied().find(|p| {
                self.peers.get(p).is_some_and(|peer| {
                    peer.ready() && peer.tx_in_flight.len() < MAX_TX_IN_FLIGHT_PER_PEER
                })
            });
            if let Some(peer_id) = chosen {
                let peer = self.peers.get_mut(&peer_id).expect("checked above");
                peer.tx_in_flight.insert(*txid);
                request.asked = Some((peer_id, now));
                batches.entry(peer_id).or_default().push(InvItem {
                    kind: InvKind::Tx,
                    hash: *txid,
                });
            }
        }
        for (peer_id, items) in batches {
            actions.push(Action::Send(peer_id, Message::GetData(items)));
        }
    }

    /// Announces transactions that entered the pool to peers that lack them.
    fn announce_txs(&mut self, actions: &mut Vec<Action>) {
        let fresh = self
            .mempool
            .lock()
            .expect("mempool lock")
            .take_announcements();
        if fresh.is_empty() {
            return;
        }
        for (id, peer) in self.peers.iter_mut().filter(|(_, p)| p.ready()) {
            let items: Vec<InvItem> = fresh
                .iter()
                .filter(|t| !peer.known.contains(t))
                .map(|hash| InvItem {
                    kind: InvKind::Tx,
                    hash: *hash,
                })
                .collect();
            for item in &items {
                peer.known.insert(item.hash);
            }
            for chunk in items.chunks(MAX_INV_ENTRIES) {
                actions.push(Action::Send(*id, Message::Inv(chunk.to_vec())));
            }
        }
    }

    fn on_version(
        &mut self,
        id: PeerId,
        version: Version,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let peer = self.peers.get(&id).expect("checked by caller");
        if peer.version.is_some() {
            self.misbehaving(id, "duplicate_version", actions);
            return;
        }
        if let Some(&ours) = self.our_nonces.get(&version.nonce) {
            // Our own `version` came back: the peer we sent it to is us.
            tracing::info!(peer = id, "connected to ourselves: disconnecting");
            let dialed = self.peers.get(&ours).and_then(|p| p.dialed);
            if let Some(dialed) = dialed.or(peer.dialed) {
                self.remember_self_address(dialed, now);
            }
            actions.push(Action::Disconnect(id, "self_connection"));
            if ours != id {
                actions.push(Action::Disconnect(ours, "self_connection"));
            }
            return;
        }
        if version.protocol_version < MIN_PROTOCOL_VERSION {
            actions.push(Action::Disconnect(id, "obsolete_version"));
            return;
        }
        let inbound = peer.inbound;
        let addr = peer.addr;
        let listen_addr = (inbound && version.listen_port != 0)
            .then(|| SocketAddr::new(addr.ip(), version.listen_port));
        if let Some(listen) = listen_addr {
            self.addrbook
                .add_new(listen, addr.ip(), unix_now(), unix_now());
        }
        let peer = self.peers.get_mut(&id).expect("checked");
        peer.version = Some(version);
        peer.listen_addr = listen_addr;
        if inbound && !peer.sent_version {
            let our = self.version_message(id);
            self.peers.get_mut(&id).expect("checked").sent_version = true;
            actions.push(Action::Send(id, our));
        }
        actions.push(Action::Send(id, Message::Verack));
        if self.peers[&id].ready() {
            self.on_handshake(id, now, actions);
        }
    }

    fn on_handshake(&mut self, id: PeerId, now: Instant, actions: &mut Vec<Action>) {
        let peer = &self.peers[&id];
        tracing::info!(
            peer = id,
            addr = %peer.addr,
            inbound = peer.inbound,
            agent = peer.version.as_ref().map_or("", |v| v.user_agent.as_str()),
            height = peer.version.as_ref().map_or(0, |v| v.start_height),
            "peer connected"
        );
        if let Some(dialed) = peer.dialed {
            self.manual_failures.remove(&dialed);
            self.addrbook.mark_good(dialed, unix_now());
            // Saved at once: a node killed right after must find it again.
            self.save_addrbook();
            if let Some(peer) = self.peers.get_mut(&id) {
                peer.addr_limit.expect_answer();
            }
            actions.push(Action::Send(id, Message::GetAddr));
        }
        actions.push(Action::Send(id, Message::SendHeaders));
        self.send_getheaders(id, now, actions);
    }

    fn send_getheaders(&mut self, id: PeerId, now: Instant, actions: &mut Vec<Action>) {
        let locator = self.chain.lock().expect("chain lock").locator();
        self.headers_request = Some((id, now));
        actions.push(Action::Send(
            id,
            Message::GetHeaders(GetHeaders {
                locator,
                stop: Hash256::ZERO,
            }),
        ));
    }

    fn on_inv(&mut self, id: PeerId, items: Vec<InvItem>, actions: &mut Vec<Action>) {
        let now = Instant::now();
        let mut ask_headers = false;
        {
            let chain = self.chain.lock().expect("chain lock");
            let pool = self.mempool.lock().expect("mempool lock");
            let peer = self.peers.get_mut(&id).expect("checked");
            for item in &items {
                peer.known.insert(item.hash);
                match item.kind {
                    InvKind::Block => {
                        if chain.index_entry(&item.hash).is_none() {
                            ask_headers = true;
                        }
                    }
                    // Kinds of later protocol versions: ignored.
                    InvKind::Other(_) => {}
                    InvKind::Tx => {
                        if pool.contains(&item.hash)
                            || self.recent_rejects.contains(&item.hash)
                            || peer.tx_announced >= MAX_PEER_TX_ANNOUNCEMENTS
                        {
                            continue;
                        }
                        let request = self.tx_requests.entry(item.hash).or_default();
                        if !request.announcers.contains(&id) {
                            request.announcers.push(id);
                            peer.tx_announced += 1;
                        }
                    }
                }
            }
        }
        if ask_headers {
            self.send_getheaders(id, now, actions);
        }
        self.request_txs(now, actions);
    }

    /// Queues a peer's `getdata`: each item once (duplicates within the
    /// request or already queued are ignored), at most `MAX_PENDING_GETDATA`
    /// waiting. Nothing is read yet: `serve_getdata` answers a little at a
    /// time, as the peer's socket drains.
    fn on_getdata(&mut self, id: PeerId, items: Vec<InvItem>) {
        let peer = self.peers.get_mut(&id).expect("checked");
        let mut ignored = 0usize;
        for item in items {
            if matches!(item.kind, InvKind::Other(_)) || peer.getdata_queued.contains(&item) {
                continue;
            }
            if peer.getdata.len() >= MAX_PENDING_GETDATA {
                ignored += 1;
                continue;
            }
            peer.getdata_queued.insert(item);
            peer.getdata.push_back(item);
        }
        if ignored > 0 {
            tracing::debug!(
                peer = id,
                ignored,
                "getdata beyond the pending limit ignored"
            );
        }
    }

    /// Whether any peer has `getdata` waiting to be served.
    pub fn has_pending_getdata(&self) -> bool {
        self.peers.values().any(|p| !p.getdata.is_empty())
    }

    /// Peers with `getdata` waiting, in a fixed order.
    pub fn peers_with_pending_getdata(&self) -> Vec<PeerId> {
        let mut ids: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.getdata.is_empty())
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Answers a peer's queued `getdata` with at most about `room` bytes of
    /// blocks and transactions and at most `MAX_GETDATA_PER_TURN` items
    /// (always at least one item), then `notfound` for what we lack.
    pub fn serve_getdata(&mut self, id: PeerId, room: usize) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut missing = Vec::new();
        let mut used = 0usize;
        let mut served = 0usize;
        while used < room && served < MAX_GETDATA_PER_TURN {
            let Some(peer) = self.peers.get_mut(&id) else {
                break;
            };
            let Some(item) = peer.getdata.pop_front() else {
                break;
            };
            peer.getdata_queued.remove(&item);
            served += 1;
            let message = match item.kind {
                InvKind::Block => {
                    let block = {
                        let chain = self.chain.lock().expect("chain lock");
                        chain.store().block(&item.hash)
                    };
                    match block {
                        Ok(Some(block)) => Some(Message::Block(Box::new(block))),
                        Ok(None) => None,
                        Err(e) => {
                            tracing::error!(error = %e, "reading a block to serve");
                            None
                        }
                    }
                }
                InvKind::Tx => self
                    .mempool
                    .lock()
                    .expect("mempool lock")
                    .get(&item.hash)
                    .map(|e| Message::Tx(Box::new((*e.tx).clone()))),
                InvKind::Other(_) => None,
            };
            match message {
                Some(message) => {
                    used += match &message {
                        Message::Block(b) => b.encoded_len(),
                        Message::Tx(t) => t.encoded_len(),
                        _ => 0,
                    };
                    let peer = self.peers.get_mut(&id).expect("checked above");
                    peer.known.insert(item.hash);
                    actions.push(Action::Send(id, message));
                }
                None => missing.push(item),
            }
        }
        if !missing.is_empty() {
            actions.push(Action::Send(id, Message::NotFound(missing)));
        }
        actions
    }

    /// A block from a peer reached our queue (it may wait for its turn): a
    /// request is stalled only if nothing arrived, however late it is
    /// handled.
    pub fn on_block_arrived(&mut self, id: PeerId, hash: BlockHash) {
        if let Some(peer) = self.peers.get_mut(&id) {
            if peer.in_flight.contains_key(&hash) {
                peer.arrived.insert(hash);
            }
        }
    }

    fn on_headers(
        &mut self,
        id: PeerId,
        headers: Vec<crate::consensus::block::BlockHeader>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        if self.headers_request.is_some_and(|(p, _)| p == id) {
            self.headers_request = None;
        }
        if headers.is_empty() {
            return;
        }
        // Each header must build on the one before it: only then do the
        // batch's claimed work and its last header speak for all of it.
        let hashes: Vec<BlockHash> = headers.iter().map(|h| h.hash()).collect();
        if headers
            .iter()
            .skip(1)
            .zip(&hashes)
            .any(|(header, prev)| header.prev_hash != *prev)
        {
            self.misbehaving(id, "non_continuous_headers", actions);
            return;
        }
        let clock_now = self.chain_clock_now();
        let peer = self.peers.get_mut(&id).expect("checked");
        if let Some(sync) = peer.headers_sync.as_mut() {
            if headers[0].prev_hash == sync.expected_parent() {
                let step = sync.on_headers(&headers, clock_now);
                self.on_sync_step(id, step, now, actions);
                return;
            }
            // Something else (a new block announced meanwhile): the pre-sync
            // cannot continue from it; the headers take the normal path.
            tracing::debug!(peer = id, "headers pre-sync interrupted");
            peer.headers_sync = None;
        }
        let full = headers.len() == MAX_HEADERS;
        // Headers are indexed only if their chain has enough work; a full
        // batch below that starts a pre-sync, a short one is ignored.
        let presync = {
            let chain = self.chain.lock().expect("chain lock");
            let known_last = chain
                .index_entry(&hashes[hashes.len() - 1])
                .is_some_and(|e| !e.is_failed());
            match chain.index_entry(&headers[0].prev_hash) {
                Some(parent) if !known_last => {
                    let claimed = headers
                        .iter()
                        .fold(parent.chain_work, |w, h| w + work_from_compact(h.bits));
                    let threshold = chain.headers_work_threshold();
                    if claimed >= threshold {
                        None
                    } else if full {
                        chain
                            .header_anchor(&headers[0].prev_hash, TIME_HISTORY)
                            .map(|anchor| {
                                HeadersSync::new(
                                    chain.params(),
                                    &anchor,
                                    threshold,
                                    chain.clock().now(),
                                )
                            })
                    } else {
                        tracing::debug!(
                            peer = id,
                            count = headers.len(),
                            "headers of a low-work chain: ignored"
                        );
                        return;
                    }
                }
                _ => None,
            }
        };
        if let Some(mut sync) = presync {
            tracing::info!(
                peer = id,
                "peer's headers lack work: starting a headers pre-sync"
            );
            let step = sync.on_headers(&headers, clock_now);
            self.peers.get_mut(&id).expect("checked").headers_sync = Some(Box::new(sync));
            self.on_sync_step(id, step, now, actions);
            return;
        }
        self.index_headers(id, &headers, full, now, actions);
    }

    fn chain_clock_now(&self) -> u32 {
        self.chain.lock().expect("chain lock").clock().now()
    }

    /// Indexes headers whose chain has enough work, then asks for more or
    /// for the blocks.
    fn index_headers(
        &mut self,
        id: PeerId,
        headers: &[crate::consensus::block::BlockHeader],
        ask_more: bool,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let outcome = match self
            .chain
            .lock()
            .expect("chain lock")
            .process_headers(headers)
        {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(error = %e, "storing headers failed");
                return;
            }
        };
        if let Some(rejection) = outcome.invalid {
            let reason = match rejection {
                HeaderRejection::Invalid(_) => "invalid_header",
                HeaderRejection::InvalidAncestor => "header_on_invalid_chain",
            };
            self.misbehaving(id, reason, actions);
            return;
        }
        let peer = self.peers.get_mut(&id).expect("checked");
        if let Some(last) = outcome.last {
            peer.known.insert(last);
            peer.best_known = Some(last);
        }
        if outcome.deferred {
            // Too far ahead of our clock: not invalid, and not the peer's
            // fault. Ask again once the clock may have caught up.
            tracing::info!(
                peer = id,
                "header time too far ahead of our clock: retrying later"
            );
            peer.headers_retry_at = Some(now + TIME_TOO_NEW_RETRY);
        } else if outcome.unconnected || ask_more {
            // An announcement whose parent we lack asks for the gap; a full
            // batch asks for the next one.
            self.send_getheaders(id, now, actions);
        }
        self.request_blocks(now, actions);
    }

    /// Acts on what the peer's headers pre-sync decided.
    fn on_sync_step(
        &mut self,
        id: PeerId,
        step: SyncStep,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        match step {
            SyncStep::Request(locator) => self.send_locator(id, locator, now, actions),
            SyncStep::Commit { headers, next } => {
                if next.is_none() {
                    tracing::info!(
                        peer = id,
                        "headers pre-sync done: the chain has enough work"
                    );
                    self.peers.get_mut(&id).expect("checked").headers_sync = None;
                }
                if !headers.is_empty() {
                    self.index_headers(id, &headers, false, now, actions);
                }
                if !self.peers.contains_key(&id) {
                    return;
                }
                match next {
                    Some(locator) => self.send_locator(id, locator, now, actions),
                    None => self.send_getheaders(id, now, actions),
                }
            }
            SyncStep::Abandoned(reason) => {
                tracing::info!(peer = id, reason, "headers pre-sync abandoned");
                self.peers.get_mut(&id).expect("checked").headers_sync = None;
            }
            SyncStep::Invalid(reason) => {
                self.peers.get_mut(&id).expect("checked").headers_sync = None;
                self.misbehaving(id, reason, actions);
            }
        }
    }

    fn send_locator(
        &mut self,
        id: PeerId,
        locator: Vec<BlockHash>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        self.headers_request = Some((id, now));
        actions.push(Action::Send(
            id,
            Message::GetHeaders(GetHeaders {
                locator,
                stop: Hash256::ZERO,
            }),
        ));
    }

    /// Memory held by headers pre-syncs, in bytes (for tests and metrics).
    pub fn headers_sync_bytes(&self) -> usize {
        self.peers
            .values()
            .filter_map(|p| p.headers_sync.as_ref())
            .map(|s| s.memory_bytes())
            .sum()
    }

    fn on_block(
        &mut self,
        id: PeerId,
        block: crate::consensus::block::Block,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let hash = block.hash();
        tracing::debug!(peer = id, %hash, "block received");
        let peer = self.peers.get_mut(&id).expect("checked");
        peer.known.insert(hash);
        let requested = peer.in_flight.remove(&hash).is_some();
        peer.arrived.remove(&hash);
        if requested {
            peer.stalls = peer.stalls.saturating_sub(1);
        }
        if self.in_flight.get(&hash) == Some(&id) {
            self.in_flight.remove(&hash);
        }
        let outcome = self.chain.lock().expect("chain lock").process_new_block(
            Arc::new(block),
            Some(id),
            requested,
        );
        if matches!(outcome, Ok(BlockOutcome::Accepted { .. })) {
            self.peers.get_mut(&id).expect("checked").last_block_at = Some(now);
        }
        match outcome {
            Ok(BlockOutcome::Invalid(error)) => {
                tracing::info!(peer = id, %hash, %error, "invalid block");
                self.misbehaving(id, "invalid_block", actions);
            }
            Ok(BlockOutcome::InvalidAncestor) => {
                self.misbehaving(id, "block_on_invalid_chain", actions)
            }
            Ok(BlockOutcome::Orphan) => self.send_getheaders(id, now, actions),
            Ok(BlockOutcome::Deferred(error)) => {
                tracing::info!(peer = id, %hash, %error, "block refused for now");
                let peer = self.peers.get_mut(&id).expect("checked");
                peer.headers_retry_at = Some(now + TIME_TOO_NEW_RETRY);
            }
            Ok(BlockOutcome::NotStored) => {
                tracing::debug!(peer = id, %hash, "unrequested low-work block dropped");
            }
            Ok(BlockOutcome::Accepted { .. } | BlockOutcome::Duplicate) => {
                let peer = self.peers.get_mut(&id).expect("checked");
                let better = {
                    let chain = self.chain.lock().expect("chain lock");
                    peer.best_known.is_none_or(|b| chain.is_ancestor(&b, &hash))
                };
                if better {
                    peer.best_known = Some(hash);
                }
            }
            Err(e) => tracing::error!(error = %e, %hash, "storing a block failed"),
        }
        self.request_blocks(now, actions);
    }

    /// Asks each peer for blocks of its best chain that we lack, within its
    /// in-flight cap; the least busy peers choose first.
    fn request_blocks(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let mut ids: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.ready()
                    && p.best_known.is_some()
                    && p.in_flight.len() < MAX_BLOCKS_IN_FLIGHT_PER_PEER
            })
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return;
        }
        ids.sort_by_key(|id| (self.peers[id].in_flight.len(), self.peers[id].stalls, *id));
        let chain = self.chain.lock().expect("chain lock");
        for peer_id in ids {
            let peer = self.peers.get_mut(&peer_id).expect("listed above");
            let best = peer.best_known.expect("filtered above");
            let capacity = MAX_BLOCKS_IN_FLIGHT_PER_PEER - peer.in_flight.len();
            let in_flight = &self.in_flight;
            let not_found = &peer.not_found;
            let wanted = chain.blocks_to_download(
                &best,
                &mut peer.last_common,
                BLOCK_DOWNLOAD_WINDOW,
                capacity,
                &|h| in_flight.contains_key(h) || not_found.contains(h),
            );
            if wanted.is_empty() {
                continue;
            }
            let mut items = Vec::with_capacity(wanted.len());
            for (hash, _) in wanted {
                peer.in_flight.insert(hash, now);
                self.in_flight.insert(hash, peer_id);
                items.push(InvItem {
                    kind: InvKind::Block,
                    hash,
                });
            }
            actions.push(Action::Send(peer_id, Message::GetData(items)));
        }
    }

    /// Announces a new tip to every peer that does not have it.
    fn announce_tip(&mut self, actions: &mut Vec<Action>) {
        let (tip, header) = {
            let chain = self.chain.lock().expect("chain lock");
            let tip = chain.tip().hash;
            (tip, chain.index_entry(&tip).expect("tip indexed").header)
        };
        if tip == self.announced_tip {
            return;
        }
        self.announced_tip = tip;
        for (id, peer) in self.peers.iter_mut().filter(|(_, p)| p.ready()) {
            if peer.known.contains(&tip) {
                continue;
            }
            peer.known.insert(tip);
            let message = if peer.send_headers {
                Message::Headers(vec![header])
            } else {
                Message::Inv(vec![InvItem {
                    kind: InvKind::Block,
                    hash: tip,
                }])
            };
            actions.push(Action::Send(*id, message));
        }
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

    /// Called when the chain changed outside the protocol (own miner, import).
    pub fn on_chain_changed(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        self.announce_tip(&mut actions);
        self.announce_txs(&mut actions);
        actions
    }

    /// Timers: handshake and ping timeouts, stalled downloads, headers
    /// re-requests, outbound connections, progress, address book saves.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut stalled_peers = Vec::new();
        for (id, peer) in &mut self.peers {
            if !peer.ready() && now.duration_since(peer.connected_at) > HANDSHAKE_TIMEOUT {
                actions.push(Action::Disconnect(*id, "handshake_timeout"));
                continue;
            }
            if let Some((_, sent)) = peer.ping {
                if now.duration_since(sent) > PING_TIMEOUT {
                    actions.push(Action::Disconnect(*id, "ping_timeout"));
                    continue;
                }
            } else if peer.ready() && now.duration_since(peer.last_ping_sent) > PING_INTERVAL {
                let nonce = rand::random();
                peer.ping = Some((nonce, now));
                peer.last_ping_sent = now;
                actions.push(Action::Send(*id, Message::Ping(nonce)));
            }
            let stalled: Vec<BlockHash> = peer
                .in_flight
                .iter()
                .filter(|(hash, asked)| {
                    now.duration_since(**asked) > BLOCK_STALL_TIMEOUT
                        && !peer.arrived.contains(*hash)
                })
                .map(|(h, _)| *h)
                .collect();
            if !stalled.is_empty() {
                peer.stalls += stalled.len() as u32;
                for hash in &stalled {
                    peer.in_flight.remove(hash);
                    self.in_flight.remove(hash);
                }
                tracing::info!(
                    peer = id,
                    blocks = stalled.len(),
                    "block download stalled: asking other peers"
                );
                if peer.stalls >= MAX_STALLS {
                    stalled_peers.push(*id);
                }
            }
        }
        for id in stalled_peers {
            actions.push(Action::Disconnect(id, "stalling"));
        }
        let retry: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.headers_retry_at.is_some_and(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in retry {
            self.peers.get_mut(&id).expect("listed").headers_retry_at = None;
            self.send_getheaders(id, now, &mut actions);
        }
        if self
            .headers_request
            .is_some_and(|(_, sent)| now.duration_since(sent) > HEADERS_RESPONSE_TIMEOUT)
        {
            self.headers_request = None;
        }
        if self.headers_request.is_none() {
            let our_best = self.chain.lock().expect("chain lock").best_header().1;
            let ahead = self
                .peers
                .iter()
                .filter(|(_, p)| {
                    p.ready()
                        && p.version
                            .as_ref()
                            .is_some_and(|v| v.start_height > our_best)
                })
                .map(|(id, _)| *id)
                .next();
            if let Some(id) = ahead {
                self.send_getheaders(id, now, &mut actions);
            }
        }
        for (txid, request) in self.tx_requests.iter_mut() {
            if let Some((slow, asked)) = request.asked {
                if now.duration_since(asked) > TX_REQUEST_TIMEOUT {
                    if let Some(peer) = self.peers.get_mut(&slow) {
                        peer.tx_in_flight.remove(txid);
                        peer.tx_announced = peer.tx_announced.saturating_sub(1);
                    }
                    request.announcers.retain(|p| *p != slow);
                    request.asked = None;
                }
            }
        }
        self.tx_requests.retain(|_, r| !r.announcers.is_empty());
        {
            let chain = self.chain.lock().expect("chain lock");
            self.mempool.lock().expect("mempool lock").catch_up(&chain);
        }
        self.request_blocks(now, &mut actions);
        self.request_txs(now, &mut actions);
        self.announce_txs(&mut actions);
        self.request_mempools(&mut actions);
        self.connect_outbound(now, &mut actions);
        self.update_progress(now);
        if now.duration_since(self.last_addrbook_save) > Duration::from_secs(60) {
            self.last_addrbook_save = now;
            self.save_addrbook();
        }
        self.discouraged.retain(|_, until| *until > now);
        actions
    }

    /// Remembers that dialing `addr` reached ourselves: it is not dialed
    /// again for `SELF_CONNECTION_BACKOFF`.
    fn remember_self_address(&mut self, addr: SocketAddr, now: Instant) {
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
    /// they listen on) or that turned out to be ourselves.
    fn connect_outbound(&mut self, now: Instant, actions: &mut Vec<Action>) {
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
        if !self.discover {
            return;
        }
        let mut outbound = self.peers.values().filter(|p| !p.inbound).count() + self.dialing.len();
        if outbound >= TARGET_OUTBOUND {
            return;
        }
        let peer_addrs: HashSet<SocketAddr> = self
            .peers
            .values()
            .flat_map(|p| [Some(p.addr), p.listen_addr])
            .flatten()
            .collect();
        let mut groups: HashSet<NetGroup> = self
            .peers
            .values()
            .filter(|p| !p.inbound)
            .map(|p| p.group)
            .chain(self.dialing.iter().map(|a| NetGroup::of(a.ip())))
            .filter(|g| g.is_routable())
            .collect();
        let listen = self.listen_port;
        let now_unix = unix_now();
        while outbound < TARGET_OUTBOUND {
            let (dialing, manual, discouraged, self_addrs) = (
                &self.dialing,
                &self.manual,
                &self.discouraged,
                &self.self_addrs,
            );
            let picked = self.addrbook.select(now, now_unix, |a| {
                connected.contains(a)
                    || peer_addrs.contains(a)
                    || dialing.contains(a)
                    || manual.contains_key(a)
                    || self_addrs.contains_key(a)
                    || discouraged.get(&a.ip()).is_some_and(|until| *until > now)
                    || (a.ip().is_loopback() && a.port() == listen)
                    || groups.contains(&NetGroup::of(a.ip()))
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
    }

    /// Pushes back the next attempt to a manual peer after a failure.
    fn back_off_manual(&mut self, addr: SocketAddr, now: Instant) {
        if let Some(next) = self.manual.get_mut(&addr) {
            let failures = self.manual_failures.entry(addr).or_insert(0);
            *failures = (*failures + 1).min(6);
            *next = now + MANUAL_RETRY_BASE * (1 << *failures);
        }
    }

    fn update_progress(&mut self, now: Instant) {
        let (header_height, block_height) = {
            let chain = self.chain.lock().expect("chain lock");
            (chain.best_header().1, chain.height())
        };
        let best_peer = self
            .peers
            .values()
            .filter_map(|p| p.version.as_ref().map(|v| v.start_height))
            .max()
            .unwrap_or(0);
        let target = header_height.max(best_peer);
        self.progress.header_height = header_height;
        self.progress.block_height = block_height;
        // Caught up (a new chain at genesis included) is 100%.
        self.progress.percent = if block_height >= target {
            100.0
        } else {
            f64::from(block_height) * 100.0 / f64::from(target)
        };
        self.progress.peers = self.peers.values().filter(|p| p.ready()).count();
        self.progress.blocks_in_flight = self.in_flight.len();
        let (since, height_then) = self.last_progress;
        let elapsed = now.duration_since(since);
        if elapsed < PROGRESS_LOG_INTERVAL {
            return;
        }
        let rate = f64::from(block_height.saturating_sub(height_then)) / elapsed.as_secs_f64();
        self.progress.blocks_per_sec = rate;
        self.last_progress = (now, block_height);
        if block_height < header_height {
            tracing::info!(
                headers = header_height,
                blocks = block_height,
                percent = format!("{:.1}", self.progress.percent),
                blocks_per_sec = format!("{rate:.1}"),
                in_flight = self.in_flight.len(),
                "syncing"
            );
        }
    }

    pub fn network(&self) -> Network {
        self.network
    }
}

/// A peer as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerSummary {
    pub id: PeerId,
    pub addr: SocketAddr,
    pub inbound: bool,
    pub ready: bool,
    pub user_agent: Option<String>,
    pub start_height: Option<u32>,
    pub blocks_in_flight: usize,
}

#[cfg(test)]
mod tests;
