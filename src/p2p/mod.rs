//! The peer-to-peer network: a listener, outbound dialing, one task per
//! connection (`connection`), and one thread that owns the protocol state
//! (`protocol::Protocol`) and is the only place that talks to the chain on
//! behalf of peers.

pub mod addr_rate;
pub mod addrbook;
pub mod connection;
pub mod eviction;
pub mod headers_sync;
pub mod netgroup;
pub mod protocol;
pub mod traffic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::chain::Chain;
use crate::consensus::params::Network;
use crate::wire::constants::PEER_SEND_QUEUE;
use crate::wire::message::Message;
use addrbook::AddrBook;
use protocol::{Action, PeerId, PeerSummary, Protocol, ProtocolCounters, SyncProgress};

/// How often the protocol's timers run.
const TICK: Duration = Duration::from_millis(250);
/// Events queued for the protocol thread; when full, connection tasks wait,
/// which stops them reading from their sockets.
const EVENT_QUEUE: usize = 1024;
/// How long a dial may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the connection tasks and the node tell the protocol thread.
#[derive(Debug)]
pub enum Event {
    Connected {
        id: PeerId,
        addr: SocketAddr,
        dialed: Option<SocketAddr>,
        outbox: mpsc::Sender<Message>,
    },
    Message(PeerId, Message),
    Violation(PeerId, &'static str),
    UnknownCommand(PeerId, String),
    Disconnected(PeerId),
    ConnectFailed(SocketAddr),
    /// The chain or the mempool changed by other means (own miner, import,
    /// REST): announce what is new.
    ChainChanged,
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
    chain: Arc<Mutex<Chain>>,
    mempool: Arc<Mutex<crate::mempool::Mempool>>,
) -> anyhow::Result<(NetworkHandle, std::thread::JoinHandle<()>)> {
    let listener = TcpListener::bind(config.bind)
        .await
        .map_err(|e| anyhow::anyhow!("binding the P2P listener on {}: {e}", config.bind))?;
    let local_addr = listener.local_addr()?;
    tracing::info!(addr = %local_addr, "p2p listening");
    let magic = config.network.params().magic;
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let status = Arc::new(Mutex::new(NetworkStatus {
        listen: Some(local_addr),
        ..NetworkStatus::default()
    }));

    let accept_events = events_tx.clone();
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, addr)) => {
                    let id = NEXT_PEER_ID.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(connection::run(
                        stream,
                        id,
                        addr,
                        None,
                        magic,
                        accept_events.clone(),
                        PEER_SEND_QUEUE,
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
        chain,
        mempool,
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
                events_rx,
                thread_events,
                thread_status,
                handle,
                magic,
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

fn run_protocol(
    mut protocol: Protocol,
    mut events: mpsc::Receiver<Event>,
    events_tx: mpsc::Sender<Event>,
    status: Arc<Mutex<NetworkStatus>>,
    runtime: Handle,
    magic: [u8; 4],
) {
    let mut outboxes: std::collections::HashMap<PeerId, mpsc::Sender<Message>> =
        std::collections::HashMap::new();
    // Tick at once: dial the configured peers without waiting a period.
    let mut last_tick = Instant::now() - TICK;
    loop {
        let event = runtime.block_on(async { tokio::time::timeout(TICK, events.recv()).await });
        let now = Instant::now();
        let mut actions = match event {
            Ok(Some(Event::Connected {
                id,
                addr,
                dialed,
                outbox,
            })) => {
                outboxes.insert(id, outbox);
                protocol.on_connected(id, addr, dialed, now)
            }
            Ok(Some(Event::Message(id, message))) => protocol.on_message(id, message, now),
            Ok(Some(Event::Violation(id, reason))) => protocol.on_violation(id, reason),
            Ok(Some(Event::UnknownCommand(id, command))) => {
                protocol.on_unknown_command(id, &command);
                Vec::new()
            }
            Ok(Some(Event::Disconnected(id))) => {
                outboxes.remove(&id);
                protocol.on_disconnected(id, now)
            }
            Ok(Some(Event::ConnectFailed(addr))) => {
                protocol.on_connect_failed(addr, now);
                Vec::new()
            }
            Ok(Some(Event::ChainChanged)) => protocol.on_chain_changed(),
            Ok(Some(Event::AddPeer(addr))) => protocol.add_peer(addr, now),
            Ok(Some(Event::RemovePeer(addr))) => protocol.remove_peer(addr),
            Ok(Some(Event::Shutdown)) | Ok(None) => break,
            Err(_) => Vec::new(),
        };
        if now.duration_since(last_tick) >= TICK {
            last_tick = now;
            actions.extend(protocol.on_tick(now));
            let mut s = status.lock().expect("status lock");
            s.peers = protocol.peer_summaries();
            s.sync = protocol.progress();
            s.counters = protocol.counters().clone();
        }
        for action in actions {
            match action {
                Action::Send(id, message) => {
                    if let Some(outbox) = outboxes.get(&id) {
                        if outbox.try_send(message).is_err() {
                            tracing::info!(peer = id, "send queue full: disconnecting");
                            outboxes.remove(&id);
                        }
                    }
                }
                Action::Disconnect(id, reason) => {
                    tracing::debug!(peer = id, reason, "disconnecting");
                    outboxes.remove(&id);
                }
                Action::Connect(addr) => {
                    let events = events_tx.clone();
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
                                    PEER_SEND_QUEUE,
                                )
                                .await;
                            }
                            _ => {
                                let _ = events.send(Event::ConnectFailed(addr)).await;
                            }
                        }
                    });
                }
            }
        }
    }
    protocol.save_addrbook();
    tracing::info!("p2p stopped");
}
