//! The REST API's listener: at most so many connections at once, in all and
//! per client, and none left idle for long. Without it, a client that opens
//! connections and holds them (sending nothing, or a byte now and then)
//! took a file descriptor each, without limit: the descriptors the node's
//! peers and RocksDB's table files need.
//!
//! When every slot is taken the listener stops accepting, so newcomers
//! wait in the kernel's backlog until a connection ends. A connection ends
//! when idle for the idle timeout, and a request must be answered within
//! `API_REQUEST_TIMEOUT` of its first byte, however slowly its client
//! sends it: a client trickling a byte at a time holds a slot for that
//! long at most. An answer must be taken at a least rate while writes wait
//! on the client (`WRITE_MIN_RATE`): a client reading a large answer a few
//! bytes a minute, never idle for the idle timeout, held it in memory. A
//! client other than loopback over its own share is refused at once (its
//! connection closed unanswered), and so is any such client once clients
//! other than loopback hold all but an eighth of the slots: that eighth
//! stays for loopback (the operator, local miners, a local reverse proxy). Loopback is one client for a proxy and every
//! client behind it, so its connections count against the whole limit
//! only.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Connections the API serves at once by default (`--api-max-connections`).
/// Each holds a file descriptor and, while a request runs, its buffers.
pub const DEFAULT_MAX_API_CONNECTIONS: usize = 512;
/// A connection with no byte read or written for this long between
/// requests is closed (`--api-idle-timeout-secs`): an idle keep-alive
/// connection. An event stream writes a keep-alive comment every 15 s, or
/// every half of a shorter timeout (`ConnectionLimits::keep_alive`), so it
/// is never idle this long.
pub const DEFAULT_API_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most connections one client (an IPv4 address, or an IPv6 /64, which
/// one host is usually given whole) holds at once, loopback excepted.
pub const MAX_API_CONNECTIONS_PER_CLIENT: usize = 32;
/// How long a request may take from its first byte to its answer's first
/// byte by default (`--api-request-timeout-secs`; hyper's own header
/// timeout, which axum's server leaves off, is 30 s too): reading it,
/// however slowly it comes, and handling it.
pub const API_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The least rate a client must take what the API writes to it, while
/// writes wait on it: each byte it takes buys `1 / WRITE_MIN_RATE` s of
/// waiting, up to `WRITE_WAIT_BUDGET` held at once (a new connection starts
/// with it full). A client reading slower than this, however steadily, is
/// cut once the budget is spent: 4 KiB/s, half a poor mobile link. A
/// writer only waits once the kernel's send buffer is full, and wakes once
/// the client has taken a good part of it, so a client keeping up never
/// spends any.
pub const WRITE_MIN_RATE: u64 = 4 * 1024;
pub const WRITE_WAIT_BUDGET: Duration = Duration::from_secs(30);
/// Unsent bytes the kernel queues for a client before a write waits
/// (`TCP_NOTSENT_LOWAT`); the writer wakes once half of them have gone.
/// Without it a writer waits until half of a send buffer that Linux grows
/// up to 4 MiB has been taken: a wait charged to the client at
/// `WRITE_MIN_RATE` that would cut a client reading steadily above it.
pub const NOTSENT_LOWAT_BYTES: i32 = 32 * 1024;
/// The share of the slots clients other than loopback may not take: an
/// eighth of them stays for loopback.
pub(crate) const LOOPBACK_RESERVE_DIVISOR: usize = 8;

/// Whether a client other than loopback may take a slot while `remote`
/// such connections are open, of `max` slots in all: an eighth of them,
/// rounded up, stays for loopback (none when there is a single slot).
pub fn remote_may_connect(remote: usize, max: usize) -> bool {
    let reserve = if max > 1 {
        max.div_ceil(LOOPBACK_RESERVE_DIVISOR)
    } else {
        0
    };
    remote < max - reserve
}
/// Pause after an accept error that is not about one connection (such as
/// running out of file descriptors), before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// The listener's limits (see the module's comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    /// `API_REQUEST_TIMEOUT` by default.
    pub request_timeout: Duration,
}

/// How often an event stream sends a keep-alive comment by default (as
/// axum's default).
pub const EVENT_KEEP_ALIVE: Duration = Duration::from_secs(15);

impl ConnectionLimits {
    /// The event stream's keep-alive interval under these limits: the
    /// default, or half the idle timeout when that is shorter, so a quiet
    /// stream is never taken for an idle connection.
    pub fn keep_alive(&self) -> Duration {
        EVENT_KEEP_ALIVE.min(self.idle_timeout / 2)
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: DEFAULT_MAX_API_CONNECTIONS,
            idle_timeout: DEFAULT_API_IDLE_TIMEOUT,
            request_timeout: API_REQUEST_TIMEOUT,
        }
    }
}

/// Who a connection is counted against: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Client(IpAddr);

impl Client {
    /// `None` for loopback, which has no share of its own.
    pub fn of(ip: IpAddr) -> Option<Client> {
        let ip = ip.to_canonical();
        if ip.is_loopback() {
            return None;
        }
        Some(Client(match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        }))
    }
}

/// Open connections (or other slots: event streams) by client, each
/// client holding at most `per_client`.
#[derive(Debug)]
pub struct ClientCounts {
    counts: Mutex<HashMap<Client, usize>>,
    per_client: usize,
    /// Woken whenever a slot is given back (`take_within`).
    released: tokio::sync::Notify,
}

impl Default for ClientCounts {
    /// Connections: `MAX_API_CONNECTIONS_PER_CLIENT` per client.
    fn default() -> ClientCounts {
        ClientCounts::new(MAX_API_CONNECTIONS_PER_CLIENT)
    }
}

impl ClientCounts {
    pub fn new(per_client: usize) -> ClientCounts {
        ClientCounts {
            counts: Mutex::default(),
            per_client,
            released: tokio::sync::Notify::new(),
        }
    }

    /// As `take`, waiting up to `wait` for a slot to be given back when
    /// none is free: for work that queues (an event stream's replay), not
    /// for connections, which are refused at once.
    pub async fn take_within(
        self: &Arc<Self>,
        ip: IpAddr,
        max: usize,
        wait: Duration,
    ) -> Option<Option<ClientSlot>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Made before the try: a slot given back in between still wakes it.
            let released = self.released.notified();
            if let Some(slot) = self.take(ip, max) {
                return Some(slot);
            }
            tokio::time::timeout_at(deadline, released).await.ok()?;
        }
    }

    /// A place for one more connection of `ip`'s client, of `max` slots in
    /// all: `Some(None)` for loopback (not counted), `None` when the client
    /// holds its share or clients other than loopback hold theirs
    /// (`remote_may_connect`).
    pub fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Option<ClientSlot>> {
        let Some(client) = Client::of(ip) else {
            return Some(None);
        };
        let mut counts = self.counts.lock().expect("client counts lock");
        let remote: usize = counts.values().sum();
        if !remote_may_connect(remote, max) {
            return None;
        }
        let count = counts.entry(client).or_insert(0);
        if *count >= self.per_client {
            return None;
        }
        *count += 1;
        Some(Some(ClientSlot {
            counts: self.clone(),
            client,
        }))
    }

    /// Connections `ip`'s client holds.
    pub fn count(&self, ip: IpAddr) -> usize {
        Client::of(ip).map_or(0, |client| {
            self.counts
                .lock()
                .expect("client counts lock")
                .get(&client)
                .copied()
                .unwrap_or(0)
        })
    }
}

/// One connection's place in its client's share, given back on drop.
#[derive(Debug)]
pub struct ClientSlot {
    counts: Arc<ClientCounts>,
    client: Client,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.counts.lock().expect("client counts lock");
        if let Some(count) = counts.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.client);
            }
        }
        drop(counts);
        self.counts.released.notify_waiters();
    }
}

/// The API's TCP listener under `ConnectionLimits`.
pub struct LimitedListener {
    inner: TcpListener,
    limits: ConnectionLimits,
    slots: Arc<Semaphore>,
    clients: Arc<ClientCounts>,
}

impl LimitedListener {
    pub fn new(inner: TcpListener, limits: ConnectionLimits) -> LimitedListener {
        LimitedListener {
            inner,
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            clients: Arc::default(),
        }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (LimitedStream, SocketAddr) {
        loop {
            let slot = self
                .slots
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let (stream, addr) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "REST API accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let Some(client) = self.clients.take(addr.ip(), self.limits.max_connections) else {
                tracing::debug!(%addr, limit = MAX_API_CONNECTIONS_PER_CLIENT, "REST client over its connection limit: closed");
                continue;
            };
            limit_unsent(&stream);
            return (LimitedStream::new(stream, &self.limits, slot, client), addr);
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Errors of one incoming connection (it went away before it was
/// accepted), after which the next accept may follow at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Whether an answer's head (its first write, as hyper sends it) opens an
/// event stream.
fn is_event_stream_head(head: &[u8]) -> bool {
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(head.len());
    const NAME: &[u8] = b"content-type:";
    const TYPE: &[u8] = b"text/event-stream";
    head[..end].split(|b| *b == b'\n').any(|line| {
        let Some(value) = line
            .get(..NAME.len())
            .filter(|name| name.eq_ignore_ascii_case(NAME))
            .map(|_| line[NAME.len()..].trim_ascii_start())
        else {
            return false;
        };
        value
            .get(..TYPE.len())
            .is_some_and(|t| t.eq_ignore_ascii_case(TYPE))
    })
}

/// Sets `NOTSENT_LOWAT_BYTES` on an accepted socket (Linux); elsewhere, or
/// if the kernel refuses, the socket keeps its default (logged).
fn limit_unsent(stream: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::fd::AsRawFd;
        let value: libc::c_int = NOTSENT_LOWAT_BYTES;
        // SAFETY: a socket descriptor the stream owns, and an int option
        // passed with its own size.
        let rc = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "TCP_NOTSENT_LOWAT not set on a REST connection");
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = stream;
}

/// An accepted connection (`S`, a TCP stream but in tests): its slots,
/// and its timeouts.
pub struct LimitedStream<S = TcpStream> {
    stream: S,
    idle_timeout: Duration,
    request_timeout: Duration,
    /// When a byte last went either way.
    last_progress: Instant,
    /// When the request being read or handled sent its first byte: bytes
    /// read since the last byte written (`API_REQUEST_TIMEOUT`).
    request_since: Option<Instant>,
    /// Fires at the earliest the connection may be idle for too long;
    /// moved on when it fires early (cheaper than moving it at every read
    /// and write).
    deadline: Pin<Box<Sleep>>,
    /// Waiting on the client the writes may still spend
    /// (`WRITE_WAIT_BUDGET`), and since when a write waits.
    write_budget: Duration,
    write_waiting_since: Option<Instant>,
    write_min_rate: u64,
    write_budget_cap: Duration,
    /// Whether the least rate applies (not to an event stream).
    write_floor: bool,
    _slot: OwnedSemaphorePermit,
    _client: Option<ClientSlot>,
}

impl<S> LimitedStream<S> {
    fn new(
        stream: S,
        limits: &ConnectionLimits,
        slot: OwnedSemaphorePermit,
        client: Option<ClientSlot>,
    ) -> LimitedStream<S> {
        let now = Instant::now();
        let idle_timeout = limits.idle_timeout;
        LimitedStream {
            stream,
            idle_timeout,
            request_timeout: limits.request_timeout,
            last_progress: now,
            request_since: None,
            deadline: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
            write_budget: WRITE_WAIT_BUDGET,
            write_waiting_since: None,
            write_min_rate: WRITE_MIN_RATE,
            write_budget_cap: WRITE_WAIT_BUDGET,
            write_floor: true,
            _slot: slot,
            _client: client,
        }
    }

    /// For an I/O call that is pending: an error once the request under
    /// way has taken `API_REQUEST_TIMEOUT`, or, between requests, once the
    /// connection has been idle for the idle timeout; else pending (the
    /// deadline wakes `cx`).
    fn pending_or_idle<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let (due, what) = match self.request_since {
                Some(since) => (since + self.request_timeout, "REST request took too long"),
                None => (
                    self.last_progress + self.idle_timeout,
                    "REST connection idle for too long",
                ),
            };
            let (due, what) = match self.write_waiting_since {
                Some(since) if since + self.write_budget < due => (
                    since + self.write_budget,
                    "REST client takes answers too slowly",
                ),
                _ => (due, what),
            };
            if Instant::now() >= due {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
            }
            self.deadline.as_mut().reset(due);
        }
    }

    /// A write waits on the client: the wait is charged to the write
    /// budget from now, and the deadline comes no later than its end.
    fn write_waits(&mut self) {
        if self.write_floor && self.write_waiting_since.is_none() {
            let now = Instant::now();
            self.write_waiting_since = Some(now);
            let due = now + self.write_budget;
            if due < self.deadline.deadline() {
                self.deadline.as_mut().reset(due);
            }
        }
    }

    /// `written` bytes went out: the wait before them is paid, and they buy
    /// more at the least rate.
    fn write_budget_progress(&mut self, written: usize) {
        if !self.write_floor {
            return;
        }
        if let Some(since) = self.write_waiting_since.take() {
            self.write_budget = self.write_budget.saturating_sub(since.elapsed());
        }
        let bought = Duration::from_secs_f64(written as f64 / self.write_min_rate.max(1) as f64);
        self.write_budget = (self.write_budget + bought).min(self.write_budget_cap);
    }

    fn read_progress(&mut self) {
        let now = Instant::now();
        self.last_progress = now;
        if self.request_since.is_none() {
            // A request begins: its deadline may come before the idle one.
            self.request_since = Some(now);
            let due = now + self.request_timeout;
            if due < self.deadline.deadline() {
                self.deadline.as_mut().reset(due);
            }
        }
    }

    /// `written` went out: the request's answer has begun, unless it is an
    /// interim `100 Continue` (which hyper sends by itself when a handler
    /// starts reading the body of a request that asked for it).
    fn write_progress(&mut self, written: &[u8]) {
        self.last_progress = Instant::now();
        if !written.starts_with(b"HTTP/1.1 100 ") {
            self.request_since = None;
        }
        // An event stream's head: the stream holds its subscriber to its
        // own rule (a subscriber whose queue fills is cut off with a
        // `close` event saying why, `crate::events`), so its writes may
        // wait as long as the idle timeout allows.
        if written.starts_with(b"HTTP/1.1 200 ") && is_event_stream_head(written) {
            self.write_floor = false;
            self.write_waiting_since = None;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LimitedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.read_progress();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.pending_or_idle(cx),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LimitedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(result) => {
                if let Ok(n @ 1..) = result {
                    this.write_progress(buf);
                    this.write_budget_progress(n);
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                this.write_waits();
                this.pending_or_idle(cx)
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                if let Ok(n @ 1..) = result {
                    let first = bufs
                        .iter()
                        .find(|b| !b.is_empty())
                        .map_or(&[][..], |b| &b[..]);
                    this.write_progress(first);
                    this.write_budget_progress(n);
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                this.write_waits();
                this.pending_or_idle(cx)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_ipv4_addresses_and_ipv6_slash_64s_and_loopback_is_none() {
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(Client::of(v4), Some(Client(v4)));
        // An IPv4-mapped IPv6 address is its IPv4 client.
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(Client::of(mapped), Client::of(v4));
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Client::of(a), Client::of(b));
        assert_ne!(Client::of(a), Client::of(c));
        for local in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(Client::of(local.parse().unwrap()), None, "{local}");
        }
    }

    #[test]
    fn a_client_holds_at_most_its_share_and_gets_it_back() {
        let counts = Arc::new(ClientCounts::default());
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let neighbour: IpAddr = "2001:db8::2".parse().unwrap();
        let mut held: Vec<_> = (0..MAX_API_CONNECTIONS_PER_CLIENT)
            .map(|_| {
                counts
                    .take(ip, DEFAULT_MAX_API_CONNECTIONS)
                    .expect("within the share")
            })
            .collect();
        assert!(held.iter().all(Option::is_some));
        // The same /64: refused.
        assert!(counts
            .take(neighbour, DEFAULT_MAX_API_CONNECTIONS)
            .is_none());
        // Another client, and loopback, are not affected.
        assert!(counts
            .take("198.51.100.1".parse().unwrap(), DEFAULT_MAX_API_CONNECTIONS)
            .is_some());
        for _ in 0..2 * MAX_API_CONNECTIONS_PER_CLIENT {
            assert!(matches!(
                counts.take("::1".parse().unwrap(), DEFAULT_MAX_API_CONNECTIONS),
                Some(None)
            ));
        }
        held.pop();
        assert_eq!(counts.count(ip), MAX_API_CONNECTIONS_PER_CLIENT - 1);
        assert!(counts
            .take(neighbour, DEFAULT_MAX_API_CONNECTIONS)
            .is_some());
        held.clear();
        assert_eq!(counts.count(ip), 0);
        assert!(counts.counts.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_slot_waited_for_comes_when_one_is_given_back_or_not_at_all() {
        let counts = Arc::new(ClientCounts::new(1));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let held = counts.take(ip, 100).unwrap();
        // Nothing given back: none within the wait.
        let none = counts.take_within(ip, 100, Duration::from_millis(50)).await;
        assert!(none.is_none());
        // Given back while waiting: taken at once.
        let giver = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(held);
        });
        let started = std::time::Instant::now();
        let slot = counts.take_within(ip, 100, Duration::from_secs(10)).await;
        assert!(matches!(slot, Some(Some(_))), "{slot:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        giver.await.unwrap();
        assert_eq!(counts.count(ip), 1);
    }

    #[test]
    fn clients_other_than_loopback_leave_an_eighth_of_the_slots() {
        assert!(remote_may_connect(447, 512));
        assert!(!remote_may_connect(448, 512));
        // Few slots: one stays for loopback, unless there is only one.
        assert!(remote_may_connect(2, 4));
        assert!(!remote_may_connect(3, 4));
        assert!(remote_may_connect(0, 1));
        assert!(!remote_may_connect(1, 1));
        // Many clients, each within its share, are refused past the
        // remote slots; loopback still gets in.
        let counts = Arc::new(ClientCounts::default());
        let max = 16;
        let held: Vec<_> = (0..14u8)
            .map(|n| counts.take(IpAddr::from([198, 51, 100, n]), max))
            .collect();
        assert!(held.iter().all(|h| matches!(h, Some(Some(_)))));
        assert!(counts.take("203.0.113.1".parse().unwrap(), max).is_none());
        assert!(matches!(
            counts.take("127.0.0.1".parse().unwrap(), max),
            Some(None)
        ));
    }

    /// Short timeouts for the tests below, in real time.
    const IDLE: Duration = Duration::from_millis(1_200);
    const REQUEST: Duration = Duration::from_millis(600);

    /// A connection over an in-memory pipe, its slot from a semaphore of
    /// one, with the timeouts above.
    fn piped() -> (
        LimitedStream<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
    ) {
        let (server, client) = tokio::io::duplex(1 << 16);
        let slot = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let limits = ConnectionLimits {
            max_connections: 1,
            idle_timeout: IDLE,
            request_timeout: REQUEST,
        };
        (LimitedStream::new(server, &limits, slot, None), client)
    }

    /// Writes `total` bytes to a piped connection whose client reads
    /// `chunk` bytes every `every`, with a least rate of 64 KiB/s and a
    /// wait budget of 500 ms; what the writing came to.
    async fn write_to_a_reader(total: usize, chunk: usize, every: Duration) -> io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut server, mut client) = piped();
        server.write_min_rate = 64 * 1024;
        server.write_budget_cap = Duration::from_millis(500);
        server.write_budget = server.write_budget_cap;
        tokio::spawn(async move {
            let mut buf = vec![0u8; chunk];
            while client.read(&mut buf).await.is_ok_and(|n| n > 0) {
                if !every.is_zero() {
                    tokio::time::sleep(every).await;
                }
            }
        });
        server.write_all(&vec![7u8; total]).await
    }

    #[test]
    fn an_event_streams_head_is_told_apart() {
        assert!(is_event_stream_head(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n"
        ));
        assert!(is_event_stream_head(
            b"HTTP/1.1 200 OK\r\nContent-Type:text/event-stream; charset=utf-8\r\n\r\n"
        ));
        assert!(!is_event_stream_head(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\ntext/event-stream"
        ));
        assert!(!is_event_stream_head(b"HTTP/1.1 200 OK\r\n\r\n"));
    }

    #[tokio::test]
    async fn an_event_streams_writes_may_wait_on_its_subscriber() {
        use tokio::io::AsyncWriteExt;
        let (mut server, client) = piped();
        server.write_min_rate = 64 * 1024;
        server.write_budget_cap = Duration::from_millis(100);
        server.write_budget = server.write_budget_cap;
        server
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
            .await
            .unwrap();
        // The subscriber reads nothing: the pipe fills and the write waits,
        // past the budget, until the idle timeout (the events module cuts
        // a subscriber that falls behind on its own terms).
        let started = Instant::now();
        let error = server.write_all(&vec![7u8; 1 << 20]).await.unwrap_err();
        assert!(error.to_string().contains("idle"), "{error}");
        assert!(started.elapsed() >= IDLE - Duration::from_millis(100));
        drop(client);
    }

    #[tokio::test]
    async fn a_client_taking_an_answer_slower_than_the_least_rate_is_cut() {
        // 1 KiB every 50 ms: 20 KiB/s, a third of the least rate; 2 MiB
        // would take 100 s.
        let slow = write_to_a_reader(2 << 20, 1024, Duration::from_millis(50)).await;
        let error = slow.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(error.to_string().contains("too slowly"), "{error}");
        // A client keeping up takes the whole answer; so does one that is
        // slow for a moment only (the budget covers a pause of 150 ms).
        write_to_a_reader(2 << 20, 64 * 1024, Duration::ZERO)
            .await
            .unwrap();
        write_to_a_reader(256 * 1024, 64 * 1024, Duration::from_millis(150))
            .await
            .unwrap();
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_sockets_queue_little_unsent_data() {
        use std::os::fd::AsRawFd;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        limit_unsent(&server);
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a socket descriptor the stream owns, and an int with its
        // size for the kernel to fill.
        let rc = unsafe {
            libc::getsockopt(
                server.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        assert_eq!(value, NOTSENT_LOWAT_BYTES);
    }

    #[tokio::test]
    async fn a_request_trickled_a_byte_at_a_time_is_cut_at_the_request_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut server, mut client) = piped();
        let started = Instant::now();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                match server.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => continue,
                    Err(e) => return Err(e.kind()),
                }
            }
        });
        // A byte every 100 ms: never idle for the idle timeout.
        while !reader.is_finished() && started.elapsed() < 2 * IDLE {
            let _ = client.write_all(b"G").await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(reader.await.unwrap(), Err(io::ErrorKind::TimedOut));
        let took = started.elapsed();
        assert!(took >= REQUEST && took < IDLE, "{took:?}");
    }

    #[tokio::test]
    async fn a_request_answered_in_time_leaves_the_connection_to_the_idle_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut server, mut client) = piped();
        // A request, handled for a while (the server polls its read side
        // meanwhile, as hyper does), then answered within its timeout.
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(server.read(&mut buf).await.unwrap() > 0);
        let handling = tokio::time::timeout(REQUEST / 2, server.read(&mut buf)).await;
        assert!(handling.is_err(), "nothing to read, and no timeout yet");
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        // Idle since the answer: the idle timeout applies, not the
        // request's (which would have struck by now).
        let started = Instant::now();
        let idle = server.read(&mut buf).await;
        assert_eq!(idle.unwrap_err().kind(), io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(took >= IDLE - Duration::from_millis(50), "{took:?}");
    }

    #[tokio::test]
    async fn an_interim_100_continue_is_not_the_answer() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut server, mut client) = piped();
        client
            .write_all(b"POST /tx HTTP/1.1\r\nExpect: 100-continue\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 128];
        assert!(server.read(&mut buf).await.unwrap() > 0);
        let started = Instant::now();
        server
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .unwrap();
        // The body never comes: cut at the request's timeout, counted from
        // its first byte, not at the idle timeout after the interim answer.
        let waited = server.read(&mut buf).await;
        assert_eq!(waited.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < IDLE, "{:?}", started.elapsed());
    }
}
