//! The REST API's listener: at most so many connections at once, in all and
//! per client, and none left idle for long. Without it, a client that opens
//! connections and holds them (sending nothing, or a byte now and then)
//! took a file descriptor each, without limit: the descriptors the node's
//! peers and RocksDB's table files need.
//!
//! When every slot is taken the listener stops accepting, so newcomers
//! wait in the kernel's backlog until a connection ends (an idle one ends
//! after the idle timeout). A client other than loopback over its own
//! share is refused at once: its connection is closed unanswered. Loopback
//! is one client for a local reverse proxy and every client behind it, so
//! its connections count against the whole limit only.

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
/// A connection with no byte read or written for this long is closed
/// (`--api-idle-timeout-secs`): a keep-alive connection between requests,
/// or a client that stopped sending its request. An event stream writes a
/// keep-alive comment every 15 s, or every half of a shorter timeout
/// (`ConnectionLimits::keep_alive`), so it is never idle this long.
pub const DEFAULT_API_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most connections one client (an IPv4 address, or an IPv6 /64, which
/// one host is usually given whole) holds at once, loopback excepted.
pub const MAX_API_CONNECTIONS_PER_CLIENT: usize = 32;
/// Pause after an accept error that is not about one connection (such as
/// running out of file descriptors), before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// The listener's limits (see the module's comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
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

/// Open connections by client.
#[derive(Debug, Default)]
pub struct ClientCounts(Mutex<HashMap<Client, usize>>);

impl ClientCounts {
    /// A place for one more connection of `ip`'s client: `Some(None)` for
    /// loopback (not counted), `None` when the client holds its share.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Option<ClientSlot>> {
        let Some(client) = Client::of(ip) else {
            return Some(None);
        };
        let mut counts = self.0.lock().expect("client counts lock");
        let count = counts.entry(client).or_insert(0);
        if *count >= MAX_API_CONNECTIONS_PER_CLIENT {
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
            self.0
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
        let mut counts = self.counts.0.lock().expect("client counts lock");
        if let Some(count) = counts.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.client);
            }
        }
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
            let Some(client) = self.clients.take(addr.ip()) else {
                tracing::debug!(%addr, limit = MAX_API_CONNECTIONS_PER_CLIENT, "REST client over its connection limit: closed");
                continue;
            };
            return (
                LimitedStream::new(stream, self.limits.idle_timeout, slot, client),
                addr,
            );
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

/// An accepted connection: its slots, and the idle timeout.
pub struct LimitedStream {
    stream: TcpStream,
    idle_timeout: Duration,
    /// When a byte last went either way.
    last_progress: Instant,
    /// Fires at the earliest the connection may be idle for too long;
    /// moved on when it fires early (cheaper than moving it at every read
    /// and write).
    deadline: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
    _client: Option<ClientSlot>,
}

impl LimitedStream {
    fn new(
        stream: TcpStream,
        idle_timeout: Duration,
        slot: OwnedSemaphorePermit,
        client: Option<ClientSlot>,
    ) -> LimitedStream {
        let now = Instant::now();
        LimitedStream {
            stream,
            idle_timeout,
            last_progress: now,
            deadline: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
            _slot: slot,
            _client: client,
        }
    }

    /// For an I/O call that is pending: an error once the connection has
    /// been idle for the timeout, else pending (the deadline wakes `cx`).
    fn pending_or_idle<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let due = self.last_progress + self.idle_timeout;
            if Instant::now() >= due {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "REST connection idle for too long",
                )));
            }
            self.deadline.as_mut().reset(due);
        }
    }
}

impl AsyncRead for LimitedStream {
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
                    this.last_progress = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.pending_or_idle(cx),
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    this.last_progress = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.pending_or_idle(cx),
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
                if matches!(result, Ok(n) if n > 0) {
                    this.last_progress = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.pending_or_idle(cx),
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
            .map(|_| counts.take(ip).expect("within the share"))
            .collect();
        assert!(held.iter().all(Option::is_some));
        // The same /64: refused.
        assert!(counts.take(neighbour).is_none());
        // Another client, and loopback, are not affected.
        assert!(counts.take("198.51.100.1".parse().unwrap()).is_some());
        for _ in 0..2 * MAX_API_CONNECTIONS_PER_CLIENT {
            assert!(matches!(counts.take("::1".parse().unwrap()), Some(None)));
        }
        held.pop();
        assert_eq!(counts.count(ip), MAX_API_CONNECTIONS_PER_CLIENT - 1);
        assert!(counts.take(neighbour).is_some());
        held.clear();
        assert_eq!(counts.count(ip), 0);
        assert!(counts.0.lock().unwrap().is_empty());
    }
}
