//! Large answers must be taken at a least rate. A client that reads a
//! large body a few bytes a minute, never idle long enough for the
//! listener's idle timeout, held the whole body in memory for as long as it
//! liked: a few hundred such connections could hold gigabytes of the
//! biggest answers (the pool's txids, raw blocks).
//!
//! A body of at least `PACED_MIN_BYTES` is handed to hyper in frames of
//! `FRAME_BYTES`, each a copy, so that what hyper holds never keeps the
//! whole body alive. hyper asks for frames until about 400 KiB wait in its
//! write buffer, then asks again once the client has taken all of them: a
//! frame asked for after the body's deadline (`RESPONSE_GRACE` plus the
//! body at `RESPONSE_MIN_RATE`) ends the connection. So the check comes
//! every 400 KiB or so that the client takes: a client slower than the
//! least rate is cut at the first such step after the deadline. Between
//! steps, the listener holds the client to a rate of its own while writes
//! wait on it (`listener::WRITE_MIN_RATE`, 4 KiB/s), so a step takes under
//! two minutes. Bodies of unknown length (event streams) are held to that
//! rate alone, once what waits for their client has filled the kernel's
//! buffers.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use tokio::time::Instant;

use super::listener::{Client, LOOPBACK_RESERVE_DIVISOR};
use super::ApiError;

/// Bodies from this size on are paced.
pub const PACED_MIN_BYTES: usize = 256 * 1024;
/// The least average rate a paced body must be taken at, after the grace:
/// 8 KiB/s (64 kbit/s, a poor mobile link), so a 1 MB raw block may take
/// two and a half minutes and the largest answer, a full pool's txids
/// (about 35 MB), 75 minutes.
pub const RESPONSE_MIN_RATE: u64 = 8 * 1024;
/// Time every paced body has beside its size at the least rate.
pub const RESPONSE_GRACE: Duration = Duration::from_secs(30);
/// A paced body's frames.
const FRAME_BYTES: usize = 64 * 1024;

/// Bytes of paced answers not yet handed to their clients, node-wide.
/// Pacing bounds how long a client may take; this bounds how much all of
/// them hold meanwhile: a client reading slowly (at the least rate, within
/// its rights) holds an answer of tens of megabytes for an hour, and a few
/// hundred connections could otherwise hold gigabytes. A large answer
/// that finds the budget spent is refused with 503 `busy` (the work done
/// to build it is lost; the memory is not held). One answer is let
/// through whatever its size while the budget holds nothing.
pub const MAX_PACED_BYTES: usize = 256 << 20;
/// Of `MAX_PACED_BYTES`, what one client (an IPv4 address, an IPv6 /64)
/// may hold; one answer is let through whatever its size while the client
/// holds nothing. Clients other than loopback leave an eighth of the total
/// to it; loopback has no share of its own, only the total. Strangers who
/// read slowly (7 clients at 32 MiB) can still keep other strangers' large
/// answers refused: the price of a bound on memory, paid by them in
/// connections held open for as long as their answers take at the least
/// rate.
pub const MAX_PACED_BYTES_PER_CLIENT: usize = 32 << 20;

/// What paced answers hold, in all and by client (see `MAX_PACED_BYTES`).
#[derive(Debug)]
pub struct AnswerBudget {
    total: usize,
    per_client: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_client: HashMap<Client, usize>,
}

impl Default for AnswerBudget {
    fn default() -> AnswerBudget {
        AnswerBudget::new(MAX_PACED_BYTES, MAX_PACED_BYTES_PER_CLIENT)
    }
}

impl AnswerBudget {
    pub fn new(total: usize, per_client: usize) -> AnswerBudget {
        AnswerBudget {
            total,
            per_client,
            held: Mutex::default(),
        }
    }

    /// `bytes` for an answer to `ip`'s client, if the budget has them.
    pub fn reserve(self: &Arc<Self>, ip: Option<IpAddr>, bytes: usize) -> Option<Reservation> {
        let client = ip.and_then(Client::of);
        let mut held = self.held.lock().expect("answer budget lock");
        // Clients other than loopback leave an eighth to it, as the
        // listener keeps connections for it: the node's explorer and its
        // operator are served while strangers hold the rest.
        let limit = match client {
            Some(_) => self.total - self.total / LOOPBACK_RESERVE_DIVISOR,
            None => self.total,
        };
        let total_fits = held.total == 0 || held.total.saturating_add(bytes) <= limit;
        let client_fits = client.is_none_or(|c| {
            let mine = held.by_client.get(&c).copied().unwrap_or(0);
            mine == 0 || mine.saturating_add(bytes) <= self.per_client
        });
        if !(total_fits && client_fits) {
            return None;
        }
        held.total += bytes;
        if let Some(c) = client {
            *held.by_client.entry(c).or_default() += bytes;
        }
        Some(Reservation {
            budget: self.clone(),
            client,
            bytes,
        })
    }

    /// Bytes held now, in all.
    pub fn held(&self) -> usize {
        self.held.lock().expect("answer budget lock").total
    }
}

/// An answer's bytes in an `AnswerBudget`, given back as they are sent
/// (`shrink_to`) and in full when dropped (sent, or the client gone).
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<AnswerBudget>,
    client: Option<Client>,
    bytes: usize,
}

impl Reservation {
    /// Keeps `bytes` of the reservation (at most what it holds).
    fn shrink_to(&mut self, bytes: usize) {
        let freed = self.bytes.saturating_sub(bytes);
        if freed == 0 {
            return;
        }
        self.bytes -= freed;
        let mut held = self.budget.held.lock().expect("answer budget lock");
        held.total -= freed;
        if let Some(c) = self.client {
            if let Some(mine) = held.by_client.get_mut(&c) {
                *mine -= freed;
                if *mine == 0 {
                    held.by_client.remove(&c);
                }
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.shrink_to(0);
    }
}

/// The limits a paced body is held to (`Pace::DEFAULT` in the API; tests
/// use shorter ones).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub min_bytes: usize,
    pub min_rate: u64,
    pub grace: Duration,
}

impl Pace {
    pub const DEFAULT: Pace = Pace {
        min_bytes: PACED_MIN_BYTES,
        min_rate: RESPONSE_MIN_RATE,
        grace: RESPONSE_GRACE,
    };

    /// When a body of `len` bytes, started at `start`, must be taken by.
    fn deadline(&self, start: Instant, len: usize) -> Instant {
        let at_rate = Duration::from_secs_f64(len as f64 / self.min_rate.max(1) as f64);
        start + self.grace + at_rate
    }
}

/// An in-memory body handed out in frames until its deadline.
pub struct PacedBody {
    rest: Bytes,
    /// Bytes of the buffer `rest` keeps alive: taking frames from a
    /// `Bytes` moves its start, never frees what was taken.
    allocated: usize,
    deadline: Instant,
    /// Its bytes in the node's `AnswerBudget`: what `allocated` holds.
    reservation: Option<Reservation>,
}

impl PacedBody {
    pub fn new(body: Bytes, pace: &Pace, start: Instant) -> PacedBody {
        PacedBody {
            deadline: pace.deadline(start, body.len()),
            allocated: body.len(),
            rest: body,
            reservation: None,
        }
    }
}

impl HttpBody for PacedBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            return Poll::Ready(None);
        }
        if Instant::now() > this.deadline {
            tracing::debug!(
                left = this.rest.len(),
                "REST answer taken too slowly: connection closed"
            );
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "REST answer taken too slowly",
            ))));
        }
        // A copy: a slice would share, and keep alive, the whole body for
        // as long as hyper holds the frame.
        let n = FRAME_BYTES.min(this.rest.len());
        let frame = Bytes::copy_from_slice(&this.rest[..n]);
        if n == this.rest.len() {
            this.rest = Bytes::new();
            this.allocated = 0;
        } else {
            bytes::Buf::advance(&mut this.rest, n);
            // Once half the buffer is sent, what is left moves to a buffer
            // of its own and the old one is freed: memory and the budget
            // follow what the client has still to take (the copies add up
            // to the body's size once).
            if this.rest.len() <= this.allocated / 2 {
                this.rest = Bytes::copy_from_slice(&this.rest);
                this.allocated = this.rest.len();
            }
        }
        if let Some(reservation) = &mut this.reservation {
            reservation.shrink_to(this.allocated);
        }
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

/// `response`, its body paced if it is in memory, of a known length, and at
/// least `pace.min_bytes`; with a `budget`, such a body is also counted in
/// it for `ip`'s client while it is sent, and refused (503 `busy`) when
/// the budget has no room.
pub async fn pace(
    response: Response,
    pace: Pace,
    budget: Option<(&Arc<AnswerBudget>, Option<IpAddr>)>,
) -> Response {
    let len = response.body().size_hint().exact();
    let Some(len) = len.filter(|len| *len >= pace.min_bytes as u64) else {
        return response;
    };
    let reservation = match budget {
        None => None,
        Some((budget, ip)) => match budget.reserve(ip, usize::try_from(len).unwrap_or(usize::MAX)) {
            Some(reservation) => Some(reservation),
            None => {
                return ApiError::unavailable(
                    "busy",
                    format!(
                        "too many large answers are being sent (at most {} MiB at once, {} MiB to one client); retry shortly",
                        MAX_PACED_BYTES >> 20,
                        MAX_PACED_BYTES_PER_CLIENT >> 20
                    ),
                )
                .into_response()
            }
        },
    };
    let (parts, body) = response.into_parts();
    // A body of a known length is in memory: collecting it moves bytes
    // already there (one frame, without a copy).
    let start = Instant::now();
    match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => {
            let mut paced = PacedBody::new(bytes, &pace, start);
            paced.reservation = reservation;
            Response::from_parts(parts, Body::new(paced))
        }
        Err(error) => {
            tracing::warn!(%error, "a REST answer's body failed before it was sent");
            let mut failed = Response::new(Body::empty());
            *failed.status_mut() = axum::http::StatusCode::INTERNAL_SERVER_ERROR;
            failed
        }
    }
}

/// Middleware: every answer through `pace` with the default limits,
/// counted in the node's `AnswerBudget`.
pub async fn pace_large_answers(
    axum::extract::State(budget): axum::extract::State<Arc<AnswerBudget>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let ip = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    pace(next.run(request).await, Pace::DEFAULT, Some((&budget, ip))).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const BIG: usize = 8 << 20;

    #[tokio::test]
    async fn small_and_unknown_length_bodies_are_left_alone_and_large_ones_keep_their_length() {
        let small = pace(
            Response::new(Body::from(vec![1u8; 1000])),
            Pace::DEFAULT,
            None,
        )
        .await;
        assert_eq!(small.body().size_hint().exact(), Some(1000));
        let stream = Body::from_stream(futures_util::stream::iter([Ok::<_, io::Error>(
            Bytes::from_static(b"event"),
        )]));
        let streamed = pace(Response::new(stream), Pace::DEFAULT, None).await;
        assert_eq!(streamed.body().size_hint().exact(), None);

        let big = pace(
            Response::new(Body::from(vec![7u8; BIG])),
            Pace::DEFAULT,
            None,
        )
        .await;
        assert_eq!(big.body().size_hint().exact(), Some(BIG as u64));
        let bytes = axum::body::to_bytes(big.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(bytes.len(), BIG);
        assert!(bytes.iter().all(|b| *b == 7));
    }

    #[test]
    fn the_answer_budget_bounds_the_total_and_each_clients_share() {
        // 80 in all, 70 of them for clients other than loopback, 40 each.
        let budget = Arc::new(AnswerBudget::new(80, 40));
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let a1 = budget.reserve(ip("192.0.2.1"), 30).unwrap();
        assert!(budget.reserve(ip("192.0.2.1"), 20).is_none(), "its share");
        let b1 = budget.reserve(ip("192.0.2.2"), 40).unwrap();
        assert_eq!(budget.held(), 70);
        assert!(
            budget.reserve(ip("192.0.2.3"), 1).is_none(),
            "strangers' part"
        );
        let local = budget.reserve(ip("127.0.0.1"), 10).unwrap();
        assert!(budget.reserve(ip("127.0.0.1"), 1).is_none(), "the total");
        drop((a1, b1, local));
        assert_eq!(budget.held(), 0);
        // One IPv6 /64 is one client.
        let v6 = budget.reserve(ip("2001:db8::1"), 40).unwrap();
        assert!(budget.reserve(ip("2001:db8::2"), 1).is_none());
        let other = budget.reserve(ip("2001:db8:0:1::2"), 1).unwrap();
        drop((v6, other));
        assert_eq!(budget.held(), 0);
        // Nothing held: one answer of any size passes.
        let huge = budget.reserve(ip("192.0.2.9"), 1000).unwrap();
        assert!(budget.reserve(ip("192.0.2.8"), 1).is_none());
        drop(huge);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_large_answer_is_counted_until_sent_and_refused_when_the_budget_is_spent() {
        let budget = Arc::new(AnswerBudget::new(BIG + BIG / 2, BIG * 2));
        let client = Some("192.0.2.1".parse::<IpAddr>().unwrap());
        let answer = || Response::new(Body::from(vec![7u8; BIG]));
        let first = pace(answer(), Pace::DEFAULT, Some((&budget, client))).await;
        assert_eq!(budget.held(), BIG);
        // A second one would pass the total while the first is unsent.
        let refused = pace(answer(), Pace::DEFAULT, Some((&budget, client))).await;
        assert_eq!(
            refused.status(),
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        );
        // Sent frame by frame, the first holds its whole buffer until half
        // is sent, then what is left alone (moved to a buffer of its own).
        let mut body = first.into_body();
        let mut sent = 0;
        while budget.held() == BIG {
            let frame = http_body_util::BodyExt::frame(&mut body)
                .await
                .unwrap()
                .unwrap();
            sent += frame.into_data().unwrap().len();
        }
        assert!(
            (BIG / 2..=BIG / 2 + FRAME_BYTES).contains(&sent),
            "the buffer was given back after {sent} of {BIG} bytes"
        );
        assert_eq!(budget.held(), BIG - sent);
        drop(body);
        assert_eq!(budget.held(), 0);
        let again = pace(answer(), Pace::DEFAULT, Some((&budget, client))).await;
        assert_eq!(again.status(), axum::http::StatusCode::OK);
    }

    #[tokio::test]
    async fn a_paced_body_asked_for_after_its_deadline_fails() {
        let pace = Pace {
            min_bytes: 0,
            min_rate: 1 << 20,
            grace: Duration::ZERO,
        };
        let start = Instant::now() - Duration::from_secs(10);
        let late = PacedBody::new(Bytes::from(vec![0u8; BIG]), &pace, start);
        let error = axum::body::to_bytes(Body::new(late), usize::MAX)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("too slowly"), "{error}");
    }

    /// Serves `/big` (a `BIG`-byte answer paced at `pace`) over an
    /// in-memory pipe of 64 KiB, as hyper serves the API.
    fn serve_big(pace_with: Pace) -> tokio::io::DuplexStream {
        let router = axum::Router::new()
            .route("/big", get(|| async { vec![7u8; BIG] }))
            .layer(axum::middleware::map_response(move |r: Response| {
                pace(r, pace_with, None)
            }));
        let (server, client) = tokio::io::duplex(64 * 1024);
        tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
            hyper_util::rt::TokioIo::new(server),
            hyper_util::service::TowerToHyperService::new(router),
        ));
        client
    }

    /// Reads what the server sends until it closes, `chunk` bytes every
    /// `every`; how many bytes came.
    async fn read_all(
        client: &mut tokio::io::DuplexStream,
        chunk: usize,
        every: Duration,
    ) -> usize {
        client
            .write_all(b"GET /big HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; chunk];
        let mut total = 0;
        loop {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
            if !every.is_zero() {
                tokio::time::sleep(every).await;
            }
        }
    }

    #[tokio::test]
    async fn a_slow_reader_is_cut_off_and_a_fast_one_gets_everything() {
        // 8 MiB at 4 MiB/s: two seconds.
        let pace_with = Pace {
            min_bytes: 0,
            min_rate: 4 << 20,
            grace: Duration::ZERO,
        };
        let mut fast = serve_big(pace_with);
        let got = read_all(&mut fast, 1 << 16, Duration::ZERO).await;
        assert!(got > BIG, "{got} bytes: the body and its head");

        // 4 KiB every 10 ms (at most 400 KiB/s) would take 20 s; it is cut
        // at hyper's first request for a frame after the deadline, some
        // 400 KiB later.
        let mut slow = serve_big(pace_with);
        let got = read_all(&mut slow, 4096, Duration::from_millis(10)).await;
        assert!(got < BIG / 2, "{got} bytes reached a slow reader");
    }
}
