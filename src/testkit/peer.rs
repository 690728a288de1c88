//! A hostile peer for process tests and benchmarks: a raw TCP client that
//! speaks the wire protocol through the crate's own codec but keeps none of
//! its manners. It can connect from any loopback address (so a test can play
//! peers of many address groups on one machine), complete a handshake with
//! any user agent and height, send any message or raw bytes, read with a
//! timeout, stop reading for good while keeping the socket open, measure
//! `ping` round trips and tell whether the node closed the connection.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::consensus::params::Network;
use crate::wire::constants::{MAX_ADDR_ENTRIES, MAX_PAYLOAD, PROTOCOL_VERSION};
use crate::wire::frame::{encode_frame, FrameCodec, FrameError};
use crate::wire::message::{AddrEntry, Message, MessageError, Version};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;
/// Longest a write may block: a node that stopped reading from us must not
/// hang the test, which then sees a write timeout instead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two checks of `wait_closed`.
const CLOSE_POLL: Duration = Duration::from_millis(100);

/// Why an exchange with the node failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("connecting from {from} to {node}: {error}")]
    Connect {
        from: IpAddr,
        node: SocketAddr,
        error: io::Error,
    },
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("bad frame from the node: {0}")]
    Frame(#[from] FrameError),
    #[error("undecodable message from the node: {0}")]
    Message(#[from] MessageError),
    #[error("the node closed the connection")]
    Closed,
    #[error("no {what} from the node within {timeout:?}")]
    Timeout {
        what: &'static str,
        timeout: Duration,
    },
    #[error("this peer stopped reading and reads nothing more")]
    NotReading,
}

/// What a peer says about itself in its `version` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub user_agent: String,
    pub start_height: u32,
    pub services: u64,
    /// 0: we accept no connections (the node then adds nothing to its
    /// address book for us).
    pub listen_port: u16,
}

impl Default for Hello {
    fn default() -> Hello {
        Hello {
            user_agent: "/hostile-peer/".into(),
            start_height: 0,
            services: 0,
            listen_port: 0,
        }
    }
}

/// One raw connection to a node.
pub struct HostilePeer {
    stream: TcpStream,
    magic: [u8; 4],
    codec: FrameCodec,
    inbox: BytesMut,
    reading: bool,
    answer_pings: bool,
    /// `receive` met the end of the stream or a reset.
    seen_close: bool,
}

impl HostilePeer {
    /// Connects to `node` from the default local address.
    pub fn connect(node: SocketAddr, network: Network) -> Result<HostilePeer, PeerError> {
        let stream = TcpStream::connect(node).map_err(|error| PeerError::Connect {
            from: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            node,
            error,
        })?;
        HostilePeer::from_stream(stream, network)
    }

    /// Connects to `node` from `source`, which must be a local address:
    /// every 127.a.b.c is one on Linux, so a test can be peers of many
    /// address groups at once.
    pub fn connect_from(
        source: Ipv4Addr,
        node: SocketAddr,
        network: Network,
    ) -> Result<HostilePeer, PeerError> {
        let SocketAddr::V4(node_v4) = node else {
            return Err(PeerError::Connect {
                from: IpAddr::V4(source),
                node,
                error: io::Error::new(io::ErrorKind::InvalidInput, "IPv4 nodes only"),
            });
        };
        let stream = bound_stream(source, node_v4).map_err(|error| PeerError::Connect {
            from: IpAddr::V4(source),
            node,
            error,
        })?;
        HostilePeer::from_stream(stream, network)
    }

    /// Wraps a connected stream (either end: tests also use it to play a
    /// node).
    pub fn from_stream(stream: TcpStream, network: Network) -> Result<HostilePeer, PeerError> {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let mut codec = FrameCodec::new(network.params().magic);
        codec.set_max_payload(MAX_PAYLOAD);
        Ok(HostilePeer {
            stream,
            magic: network.params().magic,
            codec,
            inbox: BytesMut::new(),
            reading: true,
            answer_pings: true,
            seen_close: false,
        })
    }

    /// Our end of the connection (what the node sees as the peer's address).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("a connected socket")
    }

    /// Whether `receive` answers the node's `ping`s by itself (the default:
    /// an honest peer does). An unanswered ping is one way to be dropped.
    pub fn answer_pings(&mut self, answer: bool) {
        self.answer_pings = answer;
    }

    /// Sends `version` and `verack`, then waits for the node's `version`
    /// and `verack`; returns the node's `version`.
    pub fn handshake(&mut self, hello: &Hello, timeout: Duration) -> Result<Version, PeerError> {
        self.send(&Message::Version(Version {
            protocol_version: PROTOCOL_VERSION,
            services: hello.services,
            timestamp: unix_now(),
            start_height: hello.start_height,
            nonce: rand::random(),
            listen_port: hello.listen_port,
            user_agent: hello.user_agent.clone(),
        }))?;
        self.send(&Message::Verack)?;
        let deadline = Instant::now() + timeout;
        let (mut theirs, mut verack) = (None, false);
        while theirs.is_none() || !verack {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receive(left)? {
                Some(Message::Version(v)) => theirs = Some(v),
                Some(Message::Verack) => verack = true,
                Some(_) => {}
                None => {
                    return Err(PeerError::Timeout {
                        what: "version and verack",
                        timeout,
                    })
                }
            }
        }
        Ok(theirs.expect("loop ends with a version"))
    }

    /// Sends one message.
    pub fn send(&mut self, message: &Message) -> Result<(), PeerError> {
        let frame = encode_frame(self.magic, message.command(), &message.encode_payload());
        self.send_raw(&frame)
    }

    /// Sends bytes as they are: broken frames, partial frames, anything.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), PeerError> {
        self.stream.write_all(bytes).map_err(|e| {
            self.seen_close |= is_closed(&e);
            closed_or_io(e)
        })
    }

    /// The next message, or `None` if none arrived within `timeout`.
    /// Answers the node's pings on the way if `answer_pings` is on.
    pub fn receive(&mut self, timeout: Duration) -> Result<Option<Message>, PeerError> {
        if !self.reading {
            return Err(PeerError::NotReading);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.codec.decode(&mut self.inbox)? {
                let message = Message::decode(&frame.command, &frame.payload)?;
                if let (true, Message::Ping(nonce)) = (self.answer_pings, &message) {
                    self.send(&Message::Pong(*nonce))?;
                }
                return Ok(Some(message));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream.set_read_timeout(Some(left))?;
            let start = self.inbox.len();
            self.inbox.resize(start + READ_CHUNK, 0);
            let read = self.stream.read(&mut self.inbox[start..]);
            self.inbox.truncate(start + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => {
                    self.seen_close = true;
                    return Err(PeerError::Closed);
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    self.seen_close |= is_closed(&e);
                    return Err(closed_or_io(e));
                }
            }
        }
    }

    /// Reads until a message satisfies `wanted` and returns it; `what`
    /// names it in the timeout error.
    pub fn receive_until(
        &mut self,
        what: &'static str,
        timeout: Duration,
        mut wanted: impl FnMut(&Message) -> bool,
    ) -> Result<Message, PeerError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receive(left)? {
                Some(message) if wanted(&message) => return Ok(message),
                Some(_) => {}
                None => return Err(PeerError::Timeout { what, timeout }),
            }
        }
    }

    /// Never reads from the socket again, and keeps it open: what the node
    /// sends piles up in our receive buffer, then in its own send buffer.
    pub fn stop_reading(&mut self) {
        self.reading = false;
    }

    /// One `ping` round trip: the time from sending a fresh nonce until the
    /// matching `pong` was read.
    pub fn ping(&mut self, timeout: Duration) -> Result<Duration, PeerError> {
        let nonce: u64 = rand::random();
        let start = Instant::now();
        self.send(&Message::Ping(nonce))?;
        self.receive_until("pong", timeout, |m| *m == Message::Pong(nonce))?;
        Ok(start.elapsed())
    }

    /// Whether the node has closed (or reset) the connection, seen without
    /// reading from it: a close already met by `receive`, a pending socket
    /// error, or small writes (a `ping` frame, harmless to an open node): a
    /// closed socket answers the first with a reset, so the second fails.
    pub fn closed_by_node(&mut self) -> bool {
        if self.seen_close || matches!(self.stream.take_error(), Ok(Some(_))) {
            return true;
        }
        let probe = encode_frame(self.magic, "ping", &0u64.to_le_bytes());
        let previous = self.stream.write_timeout().ok().flatten();
        let _ = self.stream.set_write_timeout(Some(CLOSE_POLL));
        let mut closed = false;
        for _ in 0..2 {
            match self.stream.write_all(&probe) {
                Err(e) if is_closed(&e) => {
                    closed = true;
                    break;
                }
                // A full buffer: the node is not reading, which is not a close.
                Err(_) => break,
                Ok(()) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        let _ = self.stream.set_write_timeout(previous);
        self.seen_close |= closed;
        closed
    }

    /// Waits up to `limit` for the node to close the connection; returns
    /// how long it took, or `None` if it is still open.
    pub fn wait_closed(&mut self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        loop {
            if self.closed_by_node() {
                return Some(start.elapsed());
            }
            if start.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(CLOSE_POLL);
        }
    }
}

/// Round trips an observer measured, and pings that got no answer in time.
#[derive(Debug, Clone, Default)]
pub struct PingStats {
    /// Sorted, shortest first; a ping that timed out counts as its timeout.
    pub rtts: Vec<Duration>,
    pub unanswered: usize,
}

impl PingStats {
    pub fn max(&self) -> Duration {
        self.rtts.last().copied().unwrap_or_default()
    }

    /// The `p`th percentile (0 to 100), nearest rank.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.rtts.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * (self.rtts.len() - 1) as f64).round() as usize;
        self.rtts[rank.min(self.rtts.len() - 1)]
    }
}

/// A thread that pings the node through one peer on a fixed schedule until
/// stopped: an observer of how responsive the node stays. Pings go out on
/// time whether or not earlier ones were answered, so a node that stalls
/// for 10 s leaves 10 s worth of slow pings in the figures, not one.
pub struct Pinger {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<PingStats>,
}

impl Pinger {
    /// Starts pinging through `peer` (handshake done) every `every`; a ping
    /// unanswered after `timeout` counts as `timeout` and unanswered.
    pub fn start(mut peer: HostilePeer, every: Duration, timeout: Duration) -> Pinger {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut stats = PingStats::default();
            let mut pending: HashMap<u64, Instant> = HashMap::new();
            let mut next = Instant::now();
            let mut open = true;
            // Ping until stopped, then wait (up to `timeout`) for the
            // answers still owed.
            let mut until: Option<Instant> = None;
            while open && until.is_none_or(|u| Instant::now() < u && !pending.is_empty()) {
                if until.is_none() && stopping.load(Ordering::Relaxed) {
                    until = Some(Instant::now() + timeout);
                    continue;
                }
                let now = Instant::now();
                if until.is_none() && now >= next {
                    let nonce: u64 = rand::random();
                    open = peer.send(&Message::Ping(nonce)).is_ok();
                    pending.insert(nonce, now);
                    next = (next + every).max(now);
                }
                let wait = match until {
                    Some(u) => u,
                    None => next,
                }
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
                match peer.receive(wait) {
                    Ok(Some(Message::Pong(nonce))) => {
                        if let Some(sent) = pending.remove(&nonce) {
                            stats.rtts.push(sent.elapsed());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => open = false,
                }
                pending.retain(|_, sent| {
                    let late = sent.elapsed() > timeout;
                    if late {
                        stats.rtts.push(timeout);
                        stats.unanswered += 1;
                    }
                    !late
                });
            }
            // Never answered: the node stopped answering or dropped us.
            stats.unanswered += pending.len();
            stats.rtts.extend(pending.values().map(|_| timeout));
            stats.rtts.sort();
            stats
        });
        Pinger { stop, thread }
    }

    /// Stops pinging, waits for the answers still owed (up to the ping
    /// timeout) and returns the figures.
    pub fn stop(self) -> PingStats {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("pinger thread")
    }
}

/// Message `m` of an `addr` flood: `MAX_ADDR_ENTRIES` loopback addresses
/// that no other message of the flood repeats, spread over the /16 groups
/// 127.1 to 127.200 (`is_flood_address`), all claiming to have been seen at
/// the end of time (`u32::MAX`).
pub fn addr_flood_message(m: usize) -> Message {
    Message::Addr(
        (0..MAX_ADDR_ENTRIES)
            .map(|j| {
                let k = m * MAX_ADDR_ENTRIES + j;
                let (group, rest) = (1 + k % 200, k / 200);
                AddrEntry {
                    time: u32::MAX,
                    services: 1,
                    addr: SocketAddr::from((
                        [127, group as u8, (rest >> 8) as u8, rest as u8],
                        18444,
                    )),
                }
            })
            .collect(),
    )
}

/// Whether `addr` is one `addr_flood_message` sends.
pub fn is_flood_address(addr: &SocketAddr) -> bool {
    matches!(addr.ip(), IpAddr::V4(ip) if ip.is_loopback() && (1..=200).contains(&ip.octets()[1]))
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn is_closed(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof
    )
}

fn closed_or_io(error: io::Error) -> PeerError {
    if is_closed(&error) {
        PeerError::Closed
    } else {
        PeerError::Io(error)
    }
}

fn sockaddr_in(addr: std::net::SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// A TCP connection to `node` whose local address is `source` (std cannot
/// bind before connecting).
fn bound_stream(source: Ipv4Addr, node: std::net::SocketAddrV4) -> io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nothing else owns; the stream closes it
    // on every path from here.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let local = sockaddr_in(std::net::SocketAddrV4::new(source, 0));
    // SAFETY: `local` is a valid sockaddr_in of `len` bytes for the call.
    if unsafe { libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let remote = sockaddr_in(node);
    // SAFETY: as above; a blocking connect on a blocking socket.
    if unsafe { libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    const NET: Network = Network::Regtest;
    const WAIT: Duration = Duration::from_secs(5);

    /// A node stand-in on 127.0.0.1: accepts one connection, hands it to
    /// `play` as a peer, and returns what `play` returns.
    fn fake_node<T: Send + 'static>(
        play: impl FnOnce(HostilePeer, SocketAddr) -> T + Send + 'static,
    ) -> (SocketAddr, JoinHandle<T>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let (stream, from) = listener.accept().unwrap();
            play(HostilePeer::from_stream(stream, NET).unwrap(), from)
        });
        (addr, thread)
    }

    /// Answers the handshake as a node does: `version`, then `verack`.
    fn answer_handshake(node: &mut HostilePeer) -> Version {
        let Message::Version(theirs) = node
            .receive_until("version", WAIT, |m| matches!(m, Message::Version(_)))
            .unwrap()
        else {
            unreachable!()
        };
        node.send(&Message::Version(Version {
            user_agent: "/fake-node/".into(),
            start_height: 7,
            ..theirs.clone()
        }))
        .unwrap();
        node.send(&Message::Verack).unwrap();
        theirs
    }

    #[test]
    fn handshakes_with_any_agent_and_height_and_measures_pings() {
        let (addr, node) = fake_node(|mut node, _| {
            let theirs = answer_handshake(&mut node);
            // Answer pings until the peer leaves.
            while let Ok(Some(m)) = node.receive(WAIT) {
                if let Message::Ping(n) = m {
                    node.send(&Message::Pong(n)).unwrap();
                }
            }
            theirs
        });
        let mut peer = HostilePeer::connect(addr, NET).unwrap();
        let hello = Hello {
            user_agent: "/anything at all/".into(),
            start_height: 123_456,
            ..Hello::default()
        };
        let theirs = peer.handshake(&hello, WAIT).unwrap();
        assert_eq!(theirs.user_agent, "/fake-node/");
        assert_eq!(theirs.start_height, 7);
        let rtt = peer.ping(WAIT).unwrap();
        assert!(rtt < WAIT);
        drop(peer);
        let ours = node.join().unwrap();
        assert_eq!(ours.user_agent, hello.user_agent);
        assert_eq!(ours.start_height, hello.start_height);
    }

    #[test]
    fn connects_from_any_loopback_address() {
        let (addr, node) = fake_node(|_, from| from);
        let peer = HostilePeer::connect_from(Ipv4Addr::new(127, 42, 7, 1), addr, NET).unwrap();
        let seen = node.join().unwrap();
        assert_eq!(seen.ip(), IpAddr::V4(Ipv4Addr::new(127, 42, 7, 1)));
        assert_eq!(seen, peer.local_addr());
    }

    #[test]
    fn receive_times_out_then_sees_the_close_and_raw_bytes_arrive_as_sent() {
        let (addr, node) = fake_node(|mut node, _| {
            let mut raw = [0u8; 5];
            node.stream.read_exact(&mut raw).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            raw
        });
        let mut peer = HostilePeer::connect(addr, NET).unwrap();
        peer.send_raw(b"hello").unwrap();
        let start = Instant::now();
        assert!(peer.receive(Duration::from_millis(100)).unwrap().is_none());
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert_eq!(&node.join().unwrap(), b"hello");
        assert!(matches!(peer.receive(WAIT), Err(PeerError::Closed)));
        assert!(peer.closed_by_node());
    }

    #[test]
    fn a_peer_that_stopped_reading_keeps_the_socket_and_still_sees_the_close() {
        let (addr, node) = fake_node(|mut node, _| {
            // Write until the peer's buffers are full and a write blocks
            // past its timeout, then close: that proves it stopped reading.
            node.stream
                .set_write_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let chunk = vec![0u8; 1 << 20];
            let mut written = 0usize;
            while node.stream.write_all(&chunk).is_ok() {
                written += chunk.len();
                assert!(written < 1 << 30, "the peer kept reading");
            }
            written
        });
        let mut peer = HostilePeer::connect(addr, NET).unwrap();
        peer.stop_reading();
        assert!(matches!(peer.receive(WAIT), Err(PeerError::NotReading)));
        assert!(!peer.closed_by_node(), "open while the node writes");
        let written = node.join().unwrap();
        assert!(written > 0);
        let took = peer.wait_closed(WAIT);
        assert!(took.is_some(), "the close was not seen");
    }

    #[test]
    fn addr_flood_messages_are_full_distinct_and_recognised() {
        let mut seen = std::collections::HashSet::new();
        for m in 0..300 {
            let Message::Addr(entries) = addr_flood_message(m) else {
                unreachable!()
            };
            assert_eq!(entries.len(), MAX_ADDR_ENTRIES);
            for e in entries {
                assert!(is_flood_address(&e.addr), "{}", e.addr);
                assert_eq!(e.time, u32::MAX);
                assert!(seen.insert(e.addr), "{} repeated", e.addr);
            }
        }
        let groups: std::collections::HashSet<u8> = seen
            .iter()
            .map(|a| match a.ip() {
                IpAddr::V4(ip) => ip.octets()[1],
                IpAddr::V6(_) => unreachable!(),
            })
            .collect();
        assert_eq!(groups.len(), 200);
        assert!(!is_flood_address(&"127.0.0.1:1".parse().unwrap()));
        assert!(!is_flood_address(&"127.201.0.1:1".parse().unwrap()));
    }

    #[test]
    fn the_pinger_keeps_its_schedule_while_the_node_stalls() {
        let (addr, node) = fake_node(|mut node, _| {
            answer_handshake(&mut node);
            // Answer promptly, except one stall of 500 ms.
            let start = Instant::now();
            let mut stalled = false;
            while let Ok(Some(m)) = node.receive(WAIT) {
                if !stalled && start.elapsed() > Duration::from_millis(200) {
                    stalled = true;
                    std::thread::sleep(Duration::from_millis(500));
                }
                if let Message::Ping(n) = m {
                    node.send(&Message::Pong(n)).unwrap();
                }
            }
        });
        let mut peer = HostilePeer::connect(addr, NET).unwrap();
        peer.handshake(&Hello::default(), WAIT).unwrap();
        let pinger = Pinger::start(peer, Duration::from_millis(20), WAIT);
        std::thread::sleep(Duration::from_millis(1_200));
        let stats = pinger.stop();
        node.join().unwrap();
        assert_eq!(stats.unanswered, 0);
        assert!(stats.rtts.len() > 30, "{} pings", stats.rtts.len());
        // About 25 pings were sent during the stall, and each waited.
        let slow = stats
            .rtts
            .iter()
            .filter(|r| **r > Duration::from_millis(100))
            .count();
        assert!(slow >= 10, "only {slow} slow pings: {:?}", stats.rtts);
        assert!(stats.max() >= Duration::from_millis(400));
    }

    #[test]
    fn ping_percentiles_use_nearest_rank() {
        let stats = PingStats {
            rtts: (1..=100).map(Duration::from_millis).collect(),
            unanswered: 0,
        };
        assert_eq!(stats.percentile(50.0), Duration::from_millis(51));
        assert_eq!(stats.percentile(99.0), Duration::from_millis(99));
        assert_eq!(stats.max(), Duration::from_millis(100));
        assert_eq!(PingStats::default().percentile(99.0), Duration::ZERO);
    }
}
