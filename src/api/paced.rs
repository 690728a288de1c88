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

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::response::Response;
use http_body::{Frame, SizeHint};
use tokio::time::Instant;

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
    deadline: Instant,
}

impl PacedBody {
    pub fn new(body: Bytes, pace: &Pace, start: Instant) -> PacedBody {
        PacedBody {
            deadline: pace.deadline(start, body.len()),
            rest: body,
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
        } else {
            bytes::Buf::advance(&mut this.rest, n);
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
/// least `pace.min_bytes`.
pub async fn pace(response: Response, pace: Pace) -> Response {
    let len = response.body().size_hint().exact();
    if len.is_none_or(|len| len < pace.min_bytes as u64) {
        return response;
    }
    let (parts, body) = response.into_parts();
    // A body of a known length is in memory: collecting it moves bytes
    // already there (one frame, without a copy).
    let start = Instant::now();
    match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => Response::from_parts(parts, Body::new(PacedBody::new(bytes, &pace, start))),
        Err(error) => {
            tracing::warn!(%error, "a REST answer's body failed before it was sent");
            let mut failed = Response::new(Body::empty());
            *failed.status_mut() = axum::http::StatusCode::INTERNAL_SERVER_ERROR;
            failed
        }
    }
}

/// Middleware: every answer through `pace` with the default limits.
pub async fn pace_large_answers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    pace(next.run(request).await, Pace::DEFAULT).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const BIG: usize = 8 << 20;

    #[tokio::test]
    async fn small_and_unknown_length_bodies_are_left_alone_and_large_ones_keep_their_length() {
        let small = pace(Response::new(Body::from(vec![1u8; 1000])), Pace::DEFAULT).await;
        assert_eq!(small.body().size_hint().exact(), Some(1000));
        let stream = Body::from_stream(futures_util::stream::iter([Ok::<_, io::Error>(
            Bytes::from_static(b"event"),
        )]));
        let streamed = pace(Response::new(stream), Pace::DEFAULT).await;
        assert_eq!(streamed.body().size_hint().exact(), None);

        let big = pace(Response::new(Body::from(vec![7u8; BIG])), Pace::DEFAULT).await;
        assert_eq!(big.body().size_hint().exact(), Some(BIG as u64));
        let bytes = axum::body::to_bytes(big.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(bytes.len(), BIG);
        assert!(bytes.iter().all(|b| *b == 7));
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
                pace(r, pace_with)
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
