//! The peer-to-peer network: a listener, outbound dialing, one task per
//! connection (`connection`), one thread that owns the protocol state
//! (`protocol::Protocol`). The protocol never touches the chain's writer
//! state: it reads what the chain publishes (`ChainReader`) and hands
//! blocks, headers and transactions the views cannot judge to the chain
//! task (`chain::ChainTask`), learning outcomes as events, so it keeps
//! answering while a block connects or a reorganisation runs.
//!
//! The protocol thread serves peers fairly: received messages wait in one
//! queue per peer (bounded in bytes by the connection tasks) and are handled
//! one per peer per round, so a peer that floods only delays itself;
//! `getdata` is served a little per round, only while the peer's send
//! buffer has room.

pub mod addr_rate;
pub mod addrbook;
pub mod connection;
pub mod eviction;
pub mod headers_sync;
pub mod netgroup;
pub mod protocol;
pub mod traffic;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, Semaphore};

use crate::chain::{BlockJob, ChainHandle};
use crate::consensus::params::Network;
use crate::wire::constants::{
    INBOUND_QUEUE_BYTES, PEER_PAUSED_REQUESTS, PEER_SEND_BUFFER_MAX_BYTES,
    PEER_SEND_BUFFER_SOFT_BYTES,
};
use crate::wire::message::Message;
use addrbook::AddrBook;
use connection::{InboundPermit, OutFrame, PeerLink};
use protocol::{Action, PeerId, PeerSummary, Protocol, ProtocolCounters, SyncProgress};

/// How often the protocol's timers run.
const TICK: Duration = Duration::from_millis(250);
/// Events queued for the protocol thread; when full, connection tasks wait,
/// which stops them reading from their sockets. Messages are also bounded in
/// bytes (`INBOUND_QUEUE_BYTES`, per peer `PEER_INBOUND_QUEUE_BYTES`).
const EVENT_QUEUE: usize = 1024;
/// How soon the protocol thread looks again at a peer whose `getdata` waits
/// for its send buffer to drain.
const GETDATA_POLL: Duration = Duration::from_millis(5);
/// How long a dial may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the connection tasks and the node tell the protocol thread.
#[derive(Debug)]
pub enum Event {
    Connected {
        id: PeerId,
        addr: SocketAddr,
        dialed: Option<SocketAddr>,
        link: PeerLink,
    },
    /// A received message, with the memory it is held against.
    Message(PeerId, Message, InboundPermit),
    /// A `block` frame with this header's hash was received whole; its
    /// message follows once the inbound budgets have room for it.
    BlockArrived(PeerId, crate::consensus::hash::BlockHash),
    Violation(PeerId, &'static str),
    UnknownCommand(PeerId, String),
    Disconnected(PeerId),
    ConnectFailed(SocketAddr),
    /// The chain or the mempool changed by other means (own miner, import,
    /// REST): announce what is new.
    ChainChanged,
    /// The chain task finished with a block a peer sent.
    BlockProcessed {
        peer: PeerId,
        hash: crate::consensus::hash::BlockHash,
        outcome: Result<crate::chain::BlockOutcome, String>,
    },
    /// The chain task indexed headers a peer sent.
    HeadersProcessed {
        peer: PeerId,
        outcome: Result<crate::chain::HeadersOutcome, String>,
        ask_more: bool,
    },
    /// The chain task judged a transaction a peer relayed.
    TxProcessed {
        peer: PeerId,
        txid: crate::consensus::hash::Txid,
        result: Result<crate::consensus::hash::Txid, crate::mempool::MempoolError>,
        /// The transaction back, when its inputs were missing (an orphan).
        orphan: Option<Box<crate::consensus::transaction::Transaction>>,
    },
    /// The operator added or removed a peer (REST).
    AddPeer(SocketAddr),
    RemovePeer(SocketAddr),
    Shutdown,
}

/// Network configuration from the command line.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    pub network: Network,
    pub bind: SocketAddr,
    pub peers: Vec<SocketAddr>,
    /// Dial only `peers`, never addresses learned from the network.
    pub connect_only: bool,
    pub data_dir: PathBuf,
}

/// What the API shows of the network.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct NetworkStatus {
    pub listen: Option<SocketAddr>,
    pub peers: Vec<PeerSummary>,
    pub sync: SyncProgress,
    pub counters: ProtocolCounters,
}

/// A handle on the running network.
#[derive(Clone)]
pub struct NetworkHandle {
    events: mpsc::Sender<Event>,
    status: Arc<Mutex<NetworkStatus>>,
    pub local_addr: SocketAddr,
}

impl NetworkHandle {
    pub fn status(&self) -> NetworkStatus {
        self.status.lock().expect("status lock").clone()
    }

    pub async fn chain_changed(&self) {
        let _ = self.events.send(Event::ChainChanged).await;
    }

    pub async fn add_peer(&self, addr: SocketAddr) {
        let _ = self.events.send(Event::AddPeer(addr)).await;
    }

    pub async fn remove_peer(&self, addr: SocketAddr) {
        let _ = self.events.send(Event::RemovePeer(addr)).await;
    }

    pub async fn shutdown(&self) {
        let _ = self.events.send(Event::Shutdown).await;
    }
}

static NEXT_PEER_ID: AtomicU64 = AtomicU64::new(1);

/// Binds the listener and starts the protocol thread. Returns once the
/// listener is bound; `join` finishes when the network has shut down.
pub async fn start(
    config: NetworkConfig,
    chain: ChainHandle,
    mempool: Arc<Mutex<crate::mempool::Mempool>>,
) -> anyhow::Result<(NetworkHandle, std::thread::JoinHandle<()>)> {
    let listener = TcpListener::bind(config.bind)
        .await
        .map_err(|e| anyhow::anyhow!("binding the P2P listener on {}: {e}", config.bind))?;
    let local_addr = listener.local_addr()?;
    tracing::info!(addr = %local_addr, "p2p listening");
    let magic = config.network.params().magic;
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let inbound_budget = Arc::new(Semaphore::new(INBOUND_QUEUE_BYTES));
    let status = Arc::new(Mutex::new(NetworkStatus {
        listen: Some(local_addr),
        ..NetworkStatus::default()
    }));

    let accept_events = events_tx.clone();
    let accept_budget = inbound_budget.clone();
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, addr)) => {
                    let id = NEXT_PEER_ID.fetch_add(1, Ordering::Relaxed);
                    // On a dual-stack listener (`--p2p-bind ::`) an IPv4
                    // peer comes as `::ffff:a.b.c.d`: known by its IPv4
                    // address, as the address book, the discouraged set
                    // and the loopback rules know it.
                    let addr = canonical(addr);
                    tokio::spawn(connection::run(
                        stream,
                        id,
                        addr,
                        None,
                        magic,
                        accept_events.clone(),
                        accept_budget.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });

    let protocol = Protocol::new(
        chain.reader().clone(),
        mempool.clone(),
        config.network,
        local_addr.port(),
        AddrBook::open(&config.data_dir, config.network),
        config.peers.clone(),
        !config.connect_only,
        Instant::now(),
    );
    let handle = Handle::current();
    let thread_events = events_tx.clone();
    let thread_status = status.clone();
    let join = std::thread::Builder::new()
        .name("p2p".into())
        .spawn(move || {
            run_protocol(
                protocol,
                ChainSide { chain, mempool },
                events_rx,
                thread_events,
                thread_status,
                handle,
                magic,
                inbound_budget,
            )
        })?;
    Ok((
        NetworkHandle {
            events: events_tx,
            status,
            local_addr,
        },
        join,
    ))
}

/// Received messages waiting for the protocol thread, one queue per peer.
#[derive(Default)]
struct InboundQueues {
    queues: HashMap<PeerId, PeerQueue>,
    /// Peers in the order they get their next turn.
    turns: VecDeque<PeerId>,
    /// Arrival number of the next message.
    next: u64,
}

/// One peer's received messages: those that ask for an answer to it
/// (`asks_for_answer`), and the others, each in arrival order with its
/// arrival number, so that they are handled in arrival order except while
/// the peer is paused (`send_paused`), when only the others are.
#[derive(Default)]
struct PeerQueue {
    asking: VecDeque<(u64, Message, InboundPermit)>,
    others: VecDeque<(u64, Message, InboundPermit)>,
}

impl PeerQueue {
    fn is_empty(&self) -> bool {
        self.asking.is_empty() && self.others.is_empty()
    }

    fn can_pop(&self, paused: bool) -> bool {
        !self.others.is_empty() || (!paused && !self.asking.is_empty())
    }

    fn pop(&mut self, paused: bool) -> Option<(Message, InboundPermit)> {
        let asking_first = !paused
            && match (self.asking.front(), self.others.front()) {
                (Some((a, ..)), Some((o, ..))) => a < o,
                (Some(_), None) => true,
                _ => false,
            };
        let queue = if asking_first {
            &mut self.asking
        } else {
            &mut self.others
        };
        queue
            .pop_front()
            .map(|(_, message, permit)| (message, permit))
    }
}

/// Whether handling `message` queues an answer to its sender: held back
/// while the sender is paused. A `getdata` is not (its items are served
/// within the send buffer's room anyway), nor is what a peer sends
/// unasked or answers with (`block`, `headers`, `pong`, ...): those keep
/// being handled, so a paused peer's blocks, headers and pongs never wait
/// for it to read.
fn asks_for_answer(message: &Message) -> bool {
    matches!(
        message,
        Message::GetHeaders(_) | Message::Ping(_) | Message::Mempool | Message::GetAddr
    )
}

impl InboundQueues {
    fn push(&mut self, id: PeerId, message: Message, permit: InboundPermit) {
        let queue = self.queues.entry(id).or_default();
        if queue.is_empty() {
            self.turns.push_back(id);
        }
        let entry = (self.next, message, permit);
        self.next += 1;
        if asks_for_answer(&entry.1) {
            queue.asking.push_back(entry);
        } else {
            queue.others.push_back(entry);
        }
    }

    /// The next message of the next peer in turn; a peer with more waiting
    /// goes to the back of the line.
    #[cfg(test)]
    fn pop(&mut self) -> Option<(PeerId, Message, InboundPermit)> {
        self.pop_unless(|_| false)
    }

    /// As `pop`, but a peer `paused` names gets only its messages that ask
    /// for no answer handled (its turn is kept).
    fn pop_unless(
        &mut self,
        paused: impl Fn(PeerId) -> bool,
    ) -> Option<(PeerId, Message, InboundPermit)> {
        for _ in 0..self.turns.len() {
            let id = self.turns.pop_front()?;
            let Some(queue) = self.queues.get_mut(&id) else {
                continue;
            };
            let paused = paused(id);
            if !queue.can_pop(paused) {
                self.turns.push_back(id);
                continue;
            }
            let Some((message, permit)) = queue.pop(paused) else {
                continue;
            };
            if queue.is_empty() {
                self.queues.remove(&id);
            } else {
                self.turns.push_back(id);
            }
            return Some((id, message, permit));
        }
        None
    }

    /// Drops what a peer still had waiting (it is being disconnected), and
    /// its turn.
    fn forget(&mut self, id: PeerId) {
        self.queues.remove(&id);
        self.turns.retain(|t| *t != id);
    }

    fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Whether a message can be handled now (`pop_unless` would give one).
    fn has_ready(&self, paused: impl Fn(PeerId) -> bool) -> bool {
        self.queues.iter().any(|(id, q)| q.can_pop(paused(*id)))
    }

    /// Paused peers with more than `PEER_PAUSED_REQUESTS` requests held
    /// back: they ask without reading the answers.
    fn overasking(&self, paused: impl Fn(PeerId) -> bool) -> Vec<PeerId> {
        self.queues
            .iter()
            .filter(|(id, q)| q.asking.len() > PEER_PAUSED_REQUESTS && paused(**id))
            .map(|(id, _)| *id)
            .collect()
    }
}

/// Whether a peer's requests wait unanswered because we have not sent it
/// what we owe: `PEER_SEND_BUFFER_SOFT_BYTES` or more wait for its socket
/// (Bitcoin Core's `fPauseSend`). Its requests (`asks_for_answer`) stay
/// queued; everything else it sends is handled as usual. A peer that keeps
/// asking meanwhile is dropped past `PEER_PAUSED_REQUESTS`, so what it
/// holds of the inbound budgets stays small.
// Every peer slot paused with all the requests it may hold holds at most a
// quarter of the node's inbound budget (manual `--peer` connections come on
// top of the slots, a few at most).
const _: () = assert!(
    (protocol::MAX_INBOUND + protocol::TARGET_OUTBOUND)
        * PEER_PAUSED_REQUESTS
        * (2 * crate::wire::constants::MAX_REQUEST_PAYLOAD
            + crate::wire::constants::QUEUED_MESSAGE_OVERHEAD_BYTES)
        <= INBOUND_QUEUE_BYTES / 4
);

fn send_paused(links: &HashMap<PeerId, PeerLink>, id: PeerId) -> bool {
    links
        .get(&id)
        .is_some_and(|l| l.queued_bytes() >= PEER_SEND_BUFFER_SOFT_BYTES)
}

/// Queues a message for a peer; says why the peer must be dropped if its
/// send buffer or queue is full.
fn enqueue(link: &PeerLink, message: &Message) -> Result<(), &'static str> {
    let frame = OutFrame::new(message);
    let len = frame.wire_len();
    if link.queued_bytes() + len > PEER_SEND_BUFFER_MAX_BYTES {
        return Err("send_buffer_full");
    }
    link.queued.fetch_add(len, Ordering::Relaxed);
    if link.outbox.try_send(frame).is_err() {
        link.queued.fetch_sub(len, Ordering::Relaxed);
        return Err("send_queue_full");
    }
    Ok(())
}

/// Judges a relayed transaction on the chain task, against its tip; the
/// transaction comes back with the outcome when its inputs were missing,
/// for the protocol's orphanage.
pub(crate) fn accept_keeping_orphan(
    mempool: &Mutex<crate::mempool::Mempool>,
    chain: &crate::chain::Chain,
    tx: Box<crate::consensus::transaction::Transaction>,
) -> (
    Result<crate::consensus::hash::Txid, crate::mempool::MempoolError>,
    Option<Box<crate::consensus::transaction::Transaction>>,
) {
    use crate::encoding::Encode as _;
    // Only a standard-size transaction can be kept as an orphan.
    let copy = (tx.encoded_len() <= crate::mempool::MAX_STANDARD_TX_SIZE).then(|| tx.clone());
    let result = crate::mempool::accept_unlocked(mempool, chain, *tx);
    let orphan =
        copy.filter(|_| matches!(result, Err(crate::mempool::MempoolError::MissingInput(_))));
    (result, orphan)
}

/// Where the protocol's chain actions go: the chain task, and the pool its
/// closures judge relayed transactions into.
struct ChainSide {
    chain: ChainHandle,
    mempool: Arc<Mutex<crate::mempool::Mempool>>,
}

impl ChainSide {
    /// Hands a chain action to the chain task, whose outcome comes back as
    /// an event; gives any other action back. `permit` is the inbound
    /// budget the message that led to it still holds: released once the
    /// block is stored, the headers indexed or the transaction judged.
    fn dispatch(
        &self,
        action: Action,
        permit: Option<InboundPermit>,
        events: &mpsc::Sender<Event>,
    ) -> Option<Action> {
        let events = events.clone();
        // The task never waits on the protocol thread (which only reads
        // what the chain publishes); with the protocol stopped the send
        // fails and the outcome goes nowhere.
        match action {
            Action::ProcessBlock {
                peer,
                block,
                requested,
            } => {
                let hash = block.hash();
                self.chain.submit_block(BlockJob {
                    source: Some(peer),
                    block,
                    requested,
                    hold: permit.map(|p| Box::new(p) as Box<dyn Send>),
                    done: Box::new(move |outcome| {
                        let _ = events.blocking_send(Event::BlockProcessed {
                            peer,
                            hash,
                            outcome: outcome.map_err(|e| e.to_string()),
                        });
                    }),
                });
            }
            Action::ProcessHeaders {
                peer,
                headers,
                ask_more,
            } => {
                let _ = self.chain.run(move |chain| {
                    let outcome = chain.process_headers(&headers).map_err(|e| e.to_string());
                    drop(permit);
                    let _ = events.blocking_send(Event::HeadersProcessed {
                        peer,
                        outcome,
                        ask_more,
                    });
                });
            }
            Action::AcceptTx { peer, tx } => {
                let mempool = self.mempool.clone();
                let _ = self.chain.run(move |chain| {
                    let txid = tx.txid();
                    let (result, orphan) = accept_keeping_orphan(&mempool, chain, tx);
                    drop(permit);
                    let _ = events.blocking_send(Event::TxProcessed {
                        peer,
                        txid,
                        result,
                        orphan,
                    });
                });
            }
            other => return Some(other),
        }
        None
    }
}

#[allow(clippy::too_many_arguments)]
fn run_protocol(
    mut protocol: Protocol,
    chain_side: ChainSide,
    mut events: mpsc::Receiver<Event>,
    events_tx: mpsc::Sender<Event>,
    status: Arc<Mutex<NetworkStatus>>,
    runtime: Handle,
    magic: [u8; 4],
    inbound_budget: Arc<Semaphore>,
) {
    let mut links: HashMap<PeerId, PeerLink> = HashMap::new();
    let mut inbound = InboundQueues::default();
    // Tick at once: dial the configured peers without waiting a period.
    let mut last_tick = Instant::now() - TICK;
    let mut shutdown = false;
    while !shutdown {
        // Take in everything that has arrived; wait only when nothing is
        // queued, and not past the next tick (or the next getdata look).
        let mut arrived = Vec::new();
        if !inbound.has_ready(|id| send_paused(&links, id)) {
            // Messages of paused peers are looked at again as their
            // sockets drain, as `getdata` is.
            let wait = if protocol.has_orphan_work() {
                Duration::ZERO
            } else if protocol.has_pending_getdata() || !inbound.is_empty() {
                GETDATA_POLL
            } else {
                TICK.saturating_sub(last_tick.elapsed())
            };
            if let Ok(Some(event)) =
                runtime.block_on(async { tokio::time::timeout(wait, events.recv()).await })
            {
                arrived.push(event);
            }
        }
        while let Ok(event) = events.try_recv() {
            arrived.push(event);
        }
        let now = Instant::now();
        let mut actions = Vec::new();
        for event in arrived {
            match event {
                Event::Connected {
                    id,
                    addr,
                    dialed,
                    link,
                } => {
                    links.insert(id, link);
                    actions.extend(protocol.on_connected(id, addr, dialed, now));
                }
                Event::Message(id, message, permit) => inbound.push(id, message, permit),
                Event::BlockArrived(id, hash) => protocol.on_block_arrived(id, hash),
                Event::Violation(id, reason) => actions.extend(protocol.on_violation(id, reason)),
                Event::UnknownCommand(id, command) => protocol.on_unknown_command(id, &command),
                Event::Disconnected(id) => {
                    links.remove(&id);
                    inbound.forget(id);
                    actions.extend(protocol.on_disconnected(id, now));
                }
                Event::ConnectFailed(addr) => protocol.on_connect_failed(addr, now),
                Event::ChainChanged => actions.extend(protocol.on_chain_changed()),
                Event::BlockProcessed {
                    peer,
                    hash,
                    outcome,
                } => actions.extend(protocol.on_block_processed(peer, hash, outcome, now)),
                Event::HeadersProcessed {
                    peer,
                    outcome,
                    ask_more,
                } => actions.extend(protocol.on_headers_processed(peer, outcome, ask_more, now)),
                Event::TxProcessed {
                    peer,
                    txid,
                    result,
                    orphan,
                } => actions.extend(protocol.on_tx_processed(
                    peer,
                    txid,
                    result,
                    orphan.map(|tx| *tx),
                    now,
                )),
                Event::AddPeer(addr) => actions.extend(protocol.add_peer(addr, now)),
                Event::RemovePeer(addr) => actions.extend(protocol.remove_peer(addr)),
                Event::Shutdown => shutdown = true,
            }
        }
        for id in inbound.overasking(|id| send_paused(&links, id)) {
            tracing::info!(
                peer = id,
                limit = PEER_PAUSED_REQUESTS,
                "peer keeps asking without reading the answers: dropped"
            );
            inbound.forget(id);
            actions.push(Action::Disconnect(id, "send_paused_requests"));
        }
        // One round: at most one message of each peer with messages waiting.
        let mut round = inbound.turns.len();
        while round > 0 {
            round -= 1;
            let Some((id, message, permit)) = inbound.pop_unless(|id| send_paused(&links, id))
            else {
                break;
            };
            // A block keeps its permit until the chain task has stored it.
            let mut permit = Some(permit);
            for action in protocol.on_message(id, message, now) {
                // Work handed to the chain task keeps counting against the
                // peer's and the node's inbound budgets until the task has
                // taken it in: a peer whose headers, blocks or transactions
                // queue up there stops being read, as if they still waited
                // in its inbound queue.
                let permit = match action {
                    Action::ProcessBlock { .. }
                    | Action::ProcessHeaders { .. }
                    | Action::AcceptTx { .. } => permit.take(),
                    _ => None,
                };
                actions.extend(chain_side.dispatch(action, permit, &events_tx));
            }
        }
        // One orphan whose parent came is judged again per round.
        actions.extend(protocol.process_orphan_work(now));
        // `getdata`, a bounded share per peer, while its send buffer has room.
        for id in protocol.peers_with_pending_getdata() {
            let room = links.get(&id).map_or(0, |l| {
                PEER_SEND_BUFFER_SOFT_BYTES.saturating_sub(l.queued_bytes())
            });
            if room > 0 {
                actions.extend(protocol.serve_getdata(id, room));
            }
        }
        if now.duration_since(last_tick) >= TICK {
            last_tick = now;
            actions.extend(protocol.on_tick(now));
            let mut s = status.lock().expect("status lock");
            s.peers = protocol.peer_summaries();
            s.sync = protocol.progress();
            s.counters = protocol.counters().clone();
        }
        // A disconnected peer is gone at once: its socket is closed, its
        // queued messages dropped, and the protocol forgets it now (so it is
        // never picked for a request while its task winds down); what the
        // protocol does about it joins the same list.
        let mut actions = VecDeque::from(actions);
        while let Some(action) = actions.pop_front() {
            let drop_peer = match action {
                Action::Send(id, message) => match links.get(&id).map(|l| enqueue(l, &message)) {
                    Some(Err(reason)) => Some((id, reason)),
                    _ => None,
                },
                Action::Disconnect(id, reason) => Some((id, reason)),
                action @ (Action::ProcessBlock { .. }
                | Action::ProcessHeaders { .. }
                | Action::AcceptTx { .. }) => {
                    chain_side.dispatch(action, None, &events_tx);
                    None
                }
                Action::Connect(addr) => {
                    let events = events_tx.clone();
                    let budget = inbound_budget.clone();
                    runtime.spawn(async move {
                        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await
                        {
                            Ok(Ok(stream)) => {
                                let id = NEXT_PEER_ID.fetch_add(1, Ordering::Relaxed);
                                connection::run(
                                    stream,
                                    id,
                                    addr,
                                    Some(addr),
                                    magic,
                                    events,
                                    budget,
                                )
                                .await;
                            }
                            _ => {
                                let _ = events.send(Event::ConnectFailed(addr)).await;
                            }
                        }
                    });
                    None
                }
            };
            if let Some((id, reason)) = drop_peer {
                if let Some(link) = links.remove(&id) {
                    tracing::debug!(peer = id, reason, "disconnecting");
                    link.close.cancel();
                }
                inbound.forget(id);
                actions.extend(protocol.on_disconnected(id, now));
            }
        }
    }
    // Close every connection now, rather than leaving a task blocked on a
    // peer that does not read until its write stall times out.
    for link in links.values() {
        link.close.cancel();
    }
    // The chain task finishes what it has; with the events' receiver gone
    // it never waits to report it.
    drop(events);
    protocol.save_addrbook();
    tracing::info!("p2p stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permit() -> InboundPermit {
        let node = Arc::new(Semaphore::new(10));
        let peer = Arc::new(Semaphore::new(10));
        InboundPermit::new(
            peer.try_acquire_many_owned(1).unwrap(),
            node.try_acquire_many_owned(1).unwrap(),
        )
    }

    #[test]
    fn a_flooding_peer_only_delays_itself() {
        let mut queues = InboundQueues::default();
        for n in 0..300 {
            queues.push(1, Message::Ping(n), permit());
        }
        queues.push(2, Message::Ping(1_000), permit());
        queues.push(3, Message::Ping(2_000), permit());
        let order: Vec<PeerId> = std::iter::from_fn(|| queues.pop().map(|(id, _, _)| id))
            .take(6)
            .collect();
        assert_eq!(order, vec![1, 2, 3, 1, 1, 1]);
        queues.forget(1);
        assert!(queues.turns.is_empty(), "a forgotten peer keeps no turn");
        assert!(queues.pop().is_none());
        assert!(queues.is_empty());
    }

    /// A paused peer (it does not read what it is sent) gets only what asks
    /// for no answer handled, in order, and keeps its requests; unpaused,
    /// it gets the rest in arrival order. Past `PEER_PAUSED_REQUESTS` held
    /// back it is named for dropping.
    #[test]
    fn a_paused_peer_gets_no_answers_but_its_other_messages_handled() {
        let mut queues = InboundQueues::default();
        queues.push(1, Message::Ping(1), permit());
        queues.push(1, Message::Pong(2), permit());
        queues.push(1, Message::GetAddr, permit());
        queues.push(1, Message::SendHeaders, permit());
        queues.push(2, Message::Ping(3), permit());
        let paused = |id: PeerId| id == 1;
        let mut handled = Vec::new();
        while let Some((id, message, _)) = queues.pop_unless(paused) {
            handled.push((id, message.command()));
        }
        assert_eq!(handled, vec![(1, "pong"), (2, "ping"), (1, "sendheaders")]);
        assert!(!queues.has_ready(paused));
        assert!(queues.has_ready(|_| false));
        assert!(queues.overasking(paused).is_empty());
        queues.push(1, Message::Pong(4), permit());
        queues.push(1, Message::Ping(5), permit());
        let order: Vec<&str> =
            std::iter::from_fn(|| queues.pop().map(|(_, m, _)| m.command())).collect();
        assert_eq!(order, vec!["ping", "getaddr", "pong", "ping"]);
        for n in 0..=PEER_PAUSED_REQUESTS as u64 {
            queues.push(1, Message::Ping(n), permit());
        }
        assert_eq!(queues.overasking(paused), vec![1]);
        assert!(queues.overasking(|_| false).is_empty());
    }

    /// Headers, a transaction and a block handed to a busy chain task keep
    /// their message's inbound budget until the task has taken each in.
    #[test]
    fn work_queued_for_the_chain_task_keeps_its_inbound_budget() {
        let dir = tempfile::tempdir().unwrap();
        let chain = crate::testkit::regtest_chain(dir.path());
        let pool = crate::mempool::Mempool::new(&chain, crate::mempool::DEFAULT_MAX_MEMPOOL_BYTES);
        let task = crate::chain::ChainTask::start(chain).unwrap();
        let handle = task.handle();
        let release = handle.hold();
        let side = ChainSide {
            chain: handle.clone(),
            mempool: Arc::new(Mutex::new(pool)),
        };
        let budget = Arc::new(Semaphore::new(1_000));
        let permit = |bytes: u32| {
            Some(InboundPermit::new(
                budget.clone().try_acquire_many_owned(bytes).unwrap(),
                Arc::new(Semaphore::new(bytes as usize))
                    .try_acquire_many_owned(bytes)
                    .unwrap(),
            ))
        };
        let mut test = crate::testkit::TestChain::new(Network::Regtest);
        let block = Arc::new(
            test.mine_empty(crate::testkit::key(1).pubkey_hash())
                .clone(),
        );
        let spend = crate::testkit::signed_spend(
            &[(
                crate::consensus::transaction::OutPoint {
                    txid: block.transactions[0].txid(),
                    vout: 0,
                },
                block.transactions[0].outputs[0],
                &crate::testkit::key(1),
            )],
            vec![],
        );
        let (events, mut outcomes) = mpsc::channel(8);
        let actions = [
            Action::ProcessHeaders {
                peer: 1,
                headers: vec![block.header],
                ask_more: false,
            },
            Action::AcceptTx {
                peer: 1,
                tx: Box::new(spend),
            },
            Action::ProcessBlock {
                peer: 1,
                block: block.clone(),
                requested: true,
            },
        ];
        for action in actions {
            assert!(side.dispatch(action, permit(300), &events).is_none());
        }
        assert_eq!(budget.available_permits(), 100, "all three still held");
        release.send(()).unwrap();
        for _ in 0..3 {
            outcomes.blocking_recv().expect("an outcome");
        }
        assert_eq!(budget.available_permits(), 1_000, "all released");
        task.stop();
    }
}

/// `addr` with an IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod canonical_tests {
    use super::*;

    #[test]
    fn a_mapped_ipv4_peer_is_known_by_its_ipv4_address() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:8333".parse().unwrap();
        assert_eq!(canonical(mapped), "127.0.0.1:8333".parse().unwrap());
        assert!(canonical(mapped).ip().is_loopback());
        let v6: SocketAddr = "[2001:db8::1]:8333".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }
}
