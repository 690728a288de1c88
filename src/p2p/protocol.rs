//! The peer-to-peer protocol as a state machine without I/O: it consumes
//! events (a peer connected, a message arrived, a peer left, time passed)
//! and returns actions (send, disconnect, connect). The socket tasks in
//! `connection` only move frames; every rule about who may send what and
//! when lives here.
//!
//! This file holds the state, the message dispatch and the timers; each
//! concern has its own file of `Protocol` methods:
//! - `handshake`: version/verack, self-connection, what follows a handshake;
//! - `sync`: headers-first sync (work threshold, pre-sync), block requests,
//!   stalls, tip announcements, progress;
//! - `relay`: transaction relay, inventory, `notfound`, the mempool exchange,
//!   `getdata` served as the peer's socket drains;
//! - `addresses`: `getaddr` and rate-limited `addr`;
//! - `slots`: inbound admission and eviction, outbound and manual dialing,
//!   peers leaving;
//! - `misbehaviour`: counting, disconnecting and discouraging.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::chain::{unix_now, BlockOutcome, Chain, ChainReader, HeadersOutcome};
use crate::consensus::hash::Txid;
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
/// How long a peer may hold back the download window before it is
/// disconnected: the window is full, another peer sits idle for want of
/// blocks to ask, and the window's lowest missing block was asked of this
/// peer and has not arrived (Bitcoin Core's `BLOCK_STALLING_TIMEOUT_DEFAULT`).
/// Without it, a peer that delivers each block just inside
/// `BLOCK_STALL_TIMEOUT` would hold a catch-up to its own pace.
pub const BLOCK_STALLING_TIMEOUT: Duration = Duration::from_secs(2);
/// Each such disconnect doubles the allowance, up to `BLOCK_STALL_TIMEOUT`
/// (past which a request's own timeout acts first), so a node whose own
/// link is slow does not drop every peer in turn; each block the chain
/// connects brings it back down by this factor.
pub const BLOCK_STALLING_TIMEOUT_DECAY: f64 = 0.85;
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
/// Once the outbound slots are full, one feeler connection this often on
/// average (at most one at a time, beside `TARGET_OUTBOUND`): it tests the
/// holder of a tried slot a newcomer collides with, or else an address of
/// the new table, and records what answers as good (Bitcoin Core's
/// `FEELER_INTERVAL`).
pub const FEELER_INTERVAL: Duration = Duration::from_secs(120);
/// Inbound connections the node accepts.
pub const MAX_INBOUND: usize = 117;
/// How long a misbehaving address is refused.
pub const DISCOURAGE_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// How often the address book is written to disk.
pub const ADDRBOOK_SAVE_INTERVAL: Duration = Duration::from_secs(60);
/// An address that becomes tried (a dial that completed its handshake) is
/// saved at once, so a node killed right after finds it again, but at most
/// once per this gap: a book full of listeners that complete a handshake
/// and hang up would otherwise have the whole book (megabytes of JSON)
/// rewritten at every dial.
pub const ADDRBOOK_PROMPT_SAVE_GAP: Duration = Duration::from_secs(10);
/// How long one sample of the address book answers `getaddr`, at least,
/// and the random spread added to it (Bitcoin Core: 21 h and up to 6 h).
pub const ADDR_ANSWER_LIFETIME: Duration = Duration::from_secs(21 * 60 * 60);
pub const ADDR_ANSWER_SPREAD: Duration = Duration::from_secs(6 * 60 * 60);
/// Misbehaving addresses remembered at once (as Bitcoin Core's rolling
/// filter of discouraged addresses); past it the oldest are forgotten. About
/// 80 bytes each: 4 MB at most.
pub const MAX_DISCOURAGED: usize = 50_000;
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
/// How long a transaction an inbound peer announced waits before it is
/// asked of that peer (Bitcoin Core's `NONPREF_PEER_TX_DELAY`): a peer we
/// dialed that announces it meanwhile is asked first, and one that
/// announces it later is the next asked should an inbound peer fail to
/// deliver. Anyone can connect to us, so a crowd of inbound peers that
/// announce first and never deliver would otherwise each hold a
/// transaction for `TX_REQUEST_TIMEOUT` before an honest peer is asked.
pub const INBOUND_TX_REQUEST_DELAY: Duration = Duration::from_secs(2);
/// Most txids in the answer to a peer's `mempool` (the pool's best-paying
/// ones, in one `inv`), which is answered once per connection: a full pool
/// holds hundreds of thousands, and one request must not cost the node a
/// sort of them under the pool's lock or a send queue of megabytes. As
/// many as a peer takes announcements from one peer at a time (a block's
/// worth of the smallest transactions): more would be marked known on both
/// sides and never asked for.
pub const MAX_MEMPOOL_ANSWER: usize = MAX_PEER_TX_ANNOUNCEMENTS;
const _: () = assert!(MAX_MEMPOOL_ANSWER <= MAX_INV_ENTRIES);
/// `headers` batches in a row that do not connect to the header tree
/// after which a peer's further ones are ignored (no `getheaders` sent for
/// them) until one connects, as Bitcoin Core's
/// `MAX_NUM_UNCONNECTING_HEADERS_MSGS`; never misbehaviour.
pub const MAX_UNCONNECTING_HEADERS: u32 = 10;
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
    /// Hand a block to the chain task; its outcome comes back through
    /// `on_block_processed`.
    ProcessBlock {
        peer: PeerId,
        block: Arc<crate::consensus::block::Block>,
        requested: bool,
    },
    /// Hand headers to the chain task to index; the outcome comes back
    /// through `on_headers_processed`, which asks for more if `ask_more`.
    ProcessHeaders {
        peer: PeerId,
        headers: Vec<crate::consensus::block::BlockHeader>,
        ask_more: bool,
    },
    /// Judge a relayed transaction against the chain task's tip (the
    /// readers' views trail it during a catch-up); the outcome comes back
    /// through `on_tx_processed`.
    AcceptTx {
        peer: PeerId,
        tx: Box<crate::consensus::transaction::Transaction>,
    },
}

/// What one peer handed to the chain task and awaits its judgement of.
#[derive(Debug, Clone, Copy)]
struct Awaiting {
    ip: IpAddr,
    headers: u32,
    blocks: u32,
    txs: u32,
}

/// A set of hashes that forgets its oldest members past a bound. It keeps
/// a 64-bit digest of each hash under a key of its own (SipHash, seeded per
/// set) instead of the 32 bytes: a peer's `known` inventory of
/// `MAX_KNOWN_INVENTORY` (tables of 65 536 slots) costs about 1.1 MB, not
/// 4.3 MB, times every peer. Two hashes share a digest with odds of
/// about 2^-64 per pair, which at worst skips one announcement to a peer;
/// a peer cannot aim at that without the key.
#[derive(Debug, Default)]
struct BoundedSet {
    key: std::collections::hash_map::RandomState,
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl BoundedSet {
    fn digest(&self, hash: &Hash256) -> u64 {
        use std::hash::BuildHasher;
        self.key.hash_one(hash.0)
    }

    fn insert(&mut self, hash: Hash256) {
        self.insert_bounded(hash, MAX_KNOWN_INVENTORY);
    }

    fn insert_bounded(&mut self, hash: Hash256, bound: usize) {
        let digest = self.digest(&hash);
        if self.set.insert(digest) {
            self.order.push_back(digest);
            if self.order.len() > bound {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn contains(&self, hash: &Hash256) -> bool {
        self.set.contains(&self.digest(hash))
    }

    fn clear(&mut self) {
        self.set.clear();
        self.order.clear();
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
    /// where the next download search starts (see `HeaderTree::blocks_to_download`).
    last_common: Option<BlockHash>,
    /// A headers pre-sync in progress: the peer's chain has not yet shown
    /// enough work to be indexed.
    headers_sync: Option<Box<HeadersSync>>,
    /// When to ask the peer for headers again after a time-too-new refusal.
    headers_retry_at: Option<Instant>,
    /// When we last sent the peer a `getheaders` it has not answered.
    getheaders_sent: Option<Instant>,
    /// Its last `headers` answer was empty: the height its `version`
    /// claimed says nothing more (until it sends headers again).
    answered_empty: bool,
    stalls: u32,
    /// The download window waits for a block asked of this peer while
    /// another peer is idle (see `BLOCK_STALLING_TIMEOUT`).
    window_hold: Option<WindowHold>,
    ping: Option<(u64, Instant)>,
    last_ping_sent: Instant,
    answered_getaddr: bool,
    /// `headers` batches in a row whose first parent was unknown (see
    /// `MAX_UNCONNECTING_HEADERS`); a batch that connects resets it.
    unconnecting_headers: u32,
    /// Whether the peer's `mempool` was answered (once per connection).
    answered_mempool: bool,
    /// Transactions asked of this peer and not delivered yet.
    tx_in_flight: HashSet<Hash256>,
    /// Transactions this peer announced that we still want: exactly those
    /// whose request lists it among the announcers (at most
    /// `MAX_PEER_TX_ANNOUNCEMENTS`). A disconnect touches these requests
    /// alone, not every request of every peer.
    /// Each with the time from which this peer may be asked for it (its
    /// announcement, plus `INBOUND_TX_REQUEST_DELAY` for an inbound peer),
    /// which a request moved to it after another announcer failed keeps.
    tx_announced: HashMap<Hash256, Instant>,
    /// Txids this peer announced and was not asked for yet, in the order
    /// announced, each with the time from which it may be asked (later for
    /// an inbound peer: `INBOUND_TX_REQUEST_DELAY`); some may have been
    /// delivered or asked of another peer since: dropped when reached.
    /// `request_txs` takes from the front, so asking costs the requests
    /// made, not every announcement waiting.
    tx_to_request: VecDeque<(Hash256, Instant)>,
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
    /// A feeler: dialed only to learn whether the address answers, and
    /// let go once its handshake completes (see `slots`).
    feeler: bool,
}

/// How long the download window has waited for one block of a peer.
#[derive(Debug)]
struct WindowHold {
    /// The block the window waits for.
    hash: BlockHash,
    /// Time seen held so far, counted only while our chain task had no
    /// requested block to work on (a node busy connecting, which may leave
    /// frames unread, blames nobody; the clock pauses).
    held: Duration,
    /// When it was last seen held, unless the clock is paused.
    seen_at: Option<Instant>,
}

impl WindowHold {
    /// Adds the time since it was last seen held, and pauses the clock.
    fn count_to(&mut self, now: Instant) {
        if let Some(seen) = self.seen_at.take() {
            self.held += now.saturating_duration_since(seen);
        }
    }
}

/// A transaction we want: who announced it and whom we asked.
#[derive(Debug, Default)]
struct TxRequest {
    announcers: Vec<PeerId>,
    asked: Option<(PeerId, Instant)>,
}

impl Peer {
    /// Past the handshake, and not a feeler: a peer to sync and relay with.
    fn ready(&self) -> bool {
        self.handshaken() && !self.feeler
    }

    /// Both `version` and `verack` exchanged.
    fn handshaken(&self) -> bool {
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
    /// What the chain published (its header tree, its tip, views of its
    /// store): the protocol never touches the chain task's state, it asks
    /// the task with actions and learns outcomes as events.
    reader: ChainReader,
    mempool: Arc<Mutex<Mempool>>,
    tx_requests: HashMap<Hash256, TxRequest>,
    recent_rejects: BoundedSet,
    /// Relayed transactions waiting for their parents.
    orphans: orphans::Orphanage,
    /// Orphans to judge again (a parent entered the pool), one per turn of
    /// the protocol thread, each listed once.
    orphan_work: VecDeque<Txid>,
    orphan_queued: HashSet<Txid>,
    /// The tip the orphans were last swept of those it confirmed.
    orphans_swept_tip: Option<BlockHash>,
    /// The tip `recent_rejects` was filled at: a new tip empties it, as
    /// Bitcoin Core's, since a refusal for a missing or immature input, a
    /// lock time or a full pool may not hold at the next one.
    rejects_tip: Option<BlockHash>,
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
    /// Blocks handed to the chain task and not yet processed, by sender:
    /// never requested again meanwhile.
    processing: HashMap<BlockHash, PeerId>,
    /// Those of `processing` that were requested: what pauses the window
    /// holder's clock (an unrequested block, which anyone can send again
    /// and again, pauses nothing).
    processing_requested: HashSet<BlockHash>,
    /// How long a peer may hold back the download window now (between
    /// `BLOCK_STALLING_TIMEOUT` and `BLOCK_STALL_TIMEOUT`), and the tip
    /// height it last came down at.
    block_stalling_timeout: Duration,
    stalling_timeout_tip: u32,
    /// When we last sent `getheaders`, and to whom.
    headers_request: Option<(PeerId, Instant)>,
    /// What each peer handed to the chain task that is not judged yet, with
    /// its address: a sender gone by then is still discouraged if it was
    /// invalid. While any header batch waits, the tick starts no headers
    /// request of its own (its locator would miss them). Bounded by the
    /// inbound budgets the work holds until judged.
    awaiting: HashMap<PeerId, Awaiting>,
    addrbook: AddrBook,
    /// The sample of the book that answers `getaddr` (see `addresses`).
    addr_answer: Option<addresses::AddrAnswer>,
    /// Peers given with `--peer`: always reconnected, with backoff; the
    /// value is when the next attempt is due.
    manual: HashMap<SocketAddr, Instant>,
    manual_failures: HashMap<SocketAddr, u32>,
    /// Whether to dial addresses from the address book (`--connect-only`
    /// turns it off).
    discover: bool,
    /// Addresses being dialed right now.
    dialing: HashSet<SocketAddr>,
    /// Those of them dialed as feelers, and when the next feeler is due.
    feeler_dials: HashSet<SocketAddr>,
    next_feeler: Instant,
    discouraged: misbehaviour::Discouraged,
    announced_tip: BlockHash,
    counters: ProtocolCounters,
    progress: SyncProgress,
    last_progress: (Instant, u32),
    last_addrbook_save: Instant,
    /// An address newly tried since the book was last saved (saved soon,
    /// see `ADDRBOOK_PROMPT_SAVE_GAP`), and when such a save last ran.
    addrbook_unsaved_tried: bool,
    last_prompt_addrbook_save: Option<Instant>,
}

fn is_local(ip: &IpAddr) -> bool {
    ip.is_loopback()
}

impl Protocol {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        reader: ChainReader,
        mempool: Arc<Mutex<Mempool>>,
        network: Network,
        listen_port: u16,
        addrbook: AddrBook,
        manual: Vec<SocketAddr>,
        discover: bool,
        now: Instant,
    ) -> Protocol {
        let published = reader.published();
        let (announced_tip, height) = published.tip;
        Protocol {
            reader,
            mempool,
            tx_requests: HashMap::new(),
            recent_rejects: BoundedSet::default(),
            orphans: orphans::Orphanage::default(),
            orphan_work: VecDeque::new(),
            orphan_queued: HashSet::new(),
            orphans_swept_tip: None,
            rejects_tip: None,
            network,
            listen_port,
            peers: HashMap::new(),
            our_nonces: HashMap::new(),
            self_addrs: HashMap::new(),
            in_flight: HashMap::new(),
            processing: HashMap::new(),
            processing_requested: HashSet::new(),
            block_stalling_timeout: BLOCK_STALLING_TIMEOUT,
            stalling_timeout_tip: height,
            headers_request: None,
            awaiting: HashMap::new(),
            addrbook,
            addr_answer: None,
            manual: manual.into_iter().map(|a| (a, now)).collect(),
            manual_failures: HashMap::new(),
            discover,
            dialing: HashSet::new(),
            feeler_dials: HashSet::new(),
            next_feeler: slots::next_feeler_after(now),
            discouraged: misbehaviour::Discouraged::default(),
            announced_tip,
            counters: ProtocolCounters::default(),
            progress: SyncProgress::default(),
            last_progress: (now, height),
            last_addrbook_save: now,
            addrbook_unsaved_tried: false,
            last_prompt_addrbook_save: None,
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

    /// Saves the book if an address became tried since the last save and
    /// the last such save is `ADDRBOOK_PROMPT_SAVE_GAP` old.
    fn save_new_tried_address(&mut self, now: Instant) {
        let due = self
            .last_prompt_addrbook_save
            .is_none_or(|last| now.duration_since(last) >= ADDRBOOK_PROMPT_SAVE_GAP);
        if self.addrbook_unsaved_tried && due {
            self.addrbook_unsaved_tried = false;
            self.last_prompt_addrbook_save = Some(now);
            self.save_addrbook();
        }
    }

    pub fn save_addrbook(&self) {
        if let Err(e) = self.addrbook.save() {
            tracing::warn!(error = %e, "could not save the address book");
        }
    }

    pub fn on_message(&mut self, id: PeerId, message: Message, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(peer) = self.peers.get(&id) else {
            return actions;
        };
        let (ready, feeler) = (peer.ready(), peer.feeler);
        match message {
            Message::Version(version) => self.on_version(id, version, now, &mut actions),
            Message::Verack => {
                let peer = self.peers.get_mut(&id).expect("checked");
                if peer.got_verack || !peer.sent_version {
                    self.misbehaving(id, "unexpected_verack", &mut actions);
                } else {
                    peer.got_verack = true;
                    if peer.handshaken() {
                        self.on_handshake(id, now, &mut actions);
                    }
                }
            }
            // A feeler's peer may speak before it sees us go: not heard.
            _ if feeler => {}
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
            Message::GetAddr => self.on_getaddr(id, now, &mut actions),
            Message::Addr(entries) => self.on_addr(id, entries, now),
            Message::Inv(items) => self.on_inv(id, items, now, &mut actions),
            Message::GetData(items) => self.on_getdata(id, items),
            Message::NotFound(items) => self.on_notfound(id, items, now, &mut actions),
            Message::GetHeaders(request) => {
                let headers = self.reader.headers().read().headers_after(
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
            Message::Mempool => self.on_mempool(id, &mut actions),
        }
        self.announce_tip(&mut actions);
        self.announce_txs(&mut actions);
        self.request_mempools(&mut actions);
        actions
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
            if !peer.handshaken() && now.duration_since(peer.connected_at) > HANDSHAKE_TIMEOUT {
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
        self.judge_window_stallers(&mut actions);
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
        if self.headers_request.is_none() && !self.headers_being_indexed() {
            let our_best = self.reader.published().best_header.1;
            let ahead = self
                .peers
                .iter()
                .filter(|(_, p)| {
                    // A peer that answered with nothing is not asked again
                    // for its claimed height: a liar's `u32::MAX` would
                    // otherwise draw a locator every tick.
                    p.ready()
                        && !p.answered_empty
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
        self.expire_tx_requests(now);
        let expired = self.orphans.expire(now);
        if expired > 0 {
            tracing::debug!(expired, "orphan transactions expired");
        }
        // The pool takes in the chain's events and, when a view meets its
        // tip, a step of a rebuild owed; a rebuild a view cannot meet (in
        // a catch-up) is the node's rebuild driver's, on the chain task.
        if let Ok(view) = self.reader.view() {
            self.mempool
                .lock()
                .expect("mempool lock")
                .catch_up_step(&view);
        }
        self.request_blocks(now, &mut actions);
        self.request_txs(now, &mut actions);
        self.announce_txs(&mut actions);
        self.request_mempools(&mut actions);
        self.connect_outbound(now, &mut actions);
        self.update_progress(now);
        if now.duration_since(self.last_addrbook_save) > ADDRBOOK_SAVE_INTERVAL {
            self.last_addrbook_save = now;
            self.addrbook_unsaved_tried = false;
            self.save_addrbook();
        }
        self.save_new_tried_address(now);
        self.discouraged.expire(now);
        actions
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

mod addresses;
mod handshake;
mod misbehaviour;
mod orphans;
mod relay;

pub use orphans::{MAX_ORPHANS, MAX_ORPHAN_BYTES, ORPHAN_EXPIRY};
mod slots;
mod sync;

#[cfg(test)]
mod tests;

impl Protocol {
    /// Transactions asked of a peer that has not delivered them within
    /// `TX_REQUEST_TIMEOUT` go to their next announcer, and the peer is no
    /// longer counted as one. Walks what is in flight (at most
    /// `MAX_TX_IN_FLIGHT_PER_PEER` per peer), never every announcement
    /// waiting. An entry in flight whose request is gone (another peer
    /// delivered the transaction) or asked of another peer is dropped, so it
    /// does not hold one of the peer's in-flight places.
    fn expire_tx_requests(&mut self, now: Instant) {
        let mut done = Vec::new();
        for (id, peer) in &self.peers {
            for txid in &peer.tx_in_flight {
                match self.tx_requests.get(txid).and_then(|r| r.asked) {
                    Some((asked_of, at)) if asked_of == *id => {
                        if now.duration_since(at) > TX_REQUEST_TIMEOUT {
                            done.push((*id, *txid, true));
                        }
                    }
                    _ => done.push((*id, *txid, false)),
                }
            }
        }
        for (slow, txid, late) in done {
            let peer = self.peers.get_mut(&slow).expect("walked above");
            peer.tx_in_flight.remove(&txid);
            if !late {
                continue;
            }
            peer.tx_announced.remove(&txid);
            let request = self.tx_requests.get_mut(&txid).expect("asked above");
            request.announcers.retain(|p| *p != slow);
            request.asked = None;
            if request.announcers.is_empty() {
                self.tx_requests.remove(&txid);
            } else {
                requeue(&mut self.peers, &txid, &request.announcers, now);
            }
        }
    }
}

/// Puts `txid`, whose request failed (timed out, answered `notfound`, its
/// peer gone), back in the queue of its first remaining announcer that we
/// dialed, else of its first remaining one: at the front, asked by the
/// next `request_txs`, once the time from which that peer may be asked
/// has come (an inbound announcer's `INBOUND_TX_REQUEST_DELAY` is not cut
/// short by another's failure); before then, among the entries in the
/// order of their times. If that one fails too, the next. One push per
/// failure: a txid that a hundred peers announced and none serves costs
/// a hundred pushes, not ten thousand.
fn requeue(peers: &mut HashMap<PeerId, Peer>, txid: &Hash256, announcers: &[PeerId], now: Instant) {
    let present = || announcers.iter().filter(|a| peers.contains_key(a));
    let next = present()
        .find(|a| !peers[a].inbound)
        .or_else(|| present().next())
        .copied();
    let Some(peer) = next.and_then(|id| peers.get_mut(&id)) else {
        return;
    };
    let ready_at = peer.tx_announced.get(txid).copied().unwrap_or(now);
    if ready_at <= now {
        peer.tx_to_request.push_front((*txid, now));
    } else {
        // Past at most `2 * MAX_PEER_TX_ANNOUNCEMENTS` entries, once per
        // failure.
        let at = peer
            .tx_to_request
            .iter()
            .position(|(_, at)| *at > ready_at)
            .unwrap_or(peer.tx_to_request.len());
        peer.tx_to_request.insert(at, (*txid, ready_at));
    }
}

/// Sweeps a peer's queue of announcements (`tx_to_request`) of entries
/// delivered, asked elsewhere or repeated, once it is twice the
/// announcement cap long: what is left is at most the cap.
fn sweep_tx_queue(peer: &mut Peer, id: PeerId, requests: &HashMap<Hash256, TxRequest>) {
    if peer.tx_to_request.len() <= 2 * MAX_PEER_TX_ANNOUNCEMENTS {
        return;
    }
    let mut seen = HashSet::new();
    peer.tx_to_request.retain(|(txid, _)| {
        requests
            .get(txid)
            .is_some_and(|r| r.asked.is_none() && r.announcers.contains(&id))
            && seen.insert(*txid)
    });
}
