//! Two tasks per TCP connection: one decodes frames into messages for the
//! protocol, the other writes the frames the protocol sends, so neither
//! waits for the other. It raises the frame
//! size limit once the peer's handshake is complete, throttles a peer that
//! sends faster than its message budget by not reading its socket, holds
//! every received message against byte budgets (the peer's and the node's)
//! until the protocol thread has handled it, and closes the socket when a
//! write makes no progress for `PEER_WRITE_STALL_TIMEOUT` or the protocol
//! says so.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWrite;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::protocol::PeerId;
use super::traffic::{TRAFFIC, UNKNOWN_COMMAND};
use super::Event;
use crate::consensus::block::{BlockHeader, HEADER_LEN};
use crate::consensus::hash::BlockHash;
use crate::encoding::Decode;
use crate::wire::constants::{
    DECODED_TX_BYTES_PER_PAYLOAD_BYTE, FRAME_HEADER_LEN, MAX_PAYLOAD, PEER_INBOUND_QUEUE_BYTES,
    PEER_MESSAGES_PER_SEC, PEER_MESSAGE_BURST, PEER_SEND_QUEUE, PEER_WRITE_STALL_TIMEOUT,
    QUEUED_MESSAGE_OVERHEAD_BYTES,
};
use crate::wire::frame::{FrameCodec, FrameError, RawFrame};
use crate::wire::message::{Message, MessageError};

/// A token bucket: `PEER_MESSAGES_PER_SEC` refill, `PEER_MESSAGE_BURST` size.
struct Budget {
    tokens: f64,
    at: Instant,
}

impl Budget {
    fn new() -> Budget {
        Budget {
            tokens: f64::from(PEER_MESSAGE_BURST),
            at: Instant::now(),
        }
    }

    /// How long to wait before one more message may be processed.
    fn take(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * f64::from(PEER_MESSAGES_PER_SEC);
        self.tokens = (self.tokens + refill).min(f64::from(PEER_MESSAGE_BURST));
        self.at = now;
        self.tokens -= 1.0;
        (self.tokens < 0.0)
            .then(|| Duration::from_secs_f64(-self.tokens / f64::from(PEER_MESSAGES_PER_SEC)))
    }
}

/// A frame the protocol thread encoded for a peer.
#[derive(Debug)]
pub struct OutFrame {
    pub command: &'static str,
    pub payload: Bytes,
}

impl OutFrame {
    pub fn new(message: &Message) -> OutFrame {
        OutFrame {
            command: message.command(),
            payload: Bytes::from(message.encode_payload()),
        }
    }

    /// Bytes the frame takes on the wire (and in our queue).
    pub fn wire_len(&self) -> usize {
        FRAME_HEADER_LEN + self.payload.len()
    }
}

/// The protocol thread's side of a connection.
#[derive(Debug, Clone)]
pub struct PeerLink {
    pub outbox: mpsc::Sender<OutFrame>,
    /// Bytes handed to the connection and not yet written to the socket.
    pub queued: Arc<AtomicUsize>,
    /// Closes the connection at once, even while a write is blocked.
    pub close: CancellationToken,
}

impl PeerLink {
    /// Bytes waiting to be written to the peer.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// Memory a received message is held against until the protocol thread has
/// handled it: its share of the peer's budget and of the node's.
#[derive(Debug)]
pub struct InboundPermit {
    _peer: OwnedSemaphorePermit,
    _node: OwnedSemaphorePermit,
}

impl InboundPermit {
    pub fn new(peer: OwnedSemaphorePermit, node: OwnedSemaphorePermit) -> InboundPermit {
        InboundPermit {
            _peer: peer,
            _node: node,
        }
    }
}

/// What a received message counts against the inbound budgets, from its
/// frame alone (counted before it is decoded): twice its payload, or for a
/// block or transaction `DECODED_TX_BYTES_PER_PAYLOAD_BYTE` times, plus a
/// fixed overhead.
fn inbound_cost(command: &str, payload_len: usize) -> u32 {
    let per_byte = match command {
        "block" | "tx" => DECODED_TX_BYTES_PER_PAYLOAD_BYTE,
        _ => 2,
    };
    (per_byte * payload_len + QUEUED_MESSAGE_OVERHEAD_BYTES) as u32
}

/// The hash of the block a `block` frame carries, from its first
/// `HEADER_LEN` bytes (a block's encoding starts with its header): known
/// before the frame is decoded or admitted. A frame whose body then fails
/// to decode ends the connection, so the hash names what the peer sent.
fn block_frame_hash(frame: &RawFrame) -> Option<BlockHash> {
    if frame.command != "block" {
        return None;
    }
    let header = frame.payload.get(..HEADER_LEN)?;
    BlockHeader::from_bytes(header).ok().map(|h| h.hash())
}

/// A writer that records when it last moved bytes, so that a write that
/// makes no progress can be told from a long one that does.
struct ProgressWriter<W> {
    inner: W,
    start: Instant,
    /// Milliseconds after `start` of the last progress.
    last: Arc<AtomicU64>,
}

impl<W> ProgressWriter<W> {
    fn mark(start: Instant, last: &AtomicU64) {
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for ProgressWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            if n > 0 {
                Self::mark(self.start, &self.last);
            }
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves once no byte has been written for `PEER_WRITE_STALL_TIMEOUT`.
async fn write_stalled(start: Instant, last: &AtomicU64) {
    loop {
        let idle = start
            .elapsed()
            .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
        if idle >= PEER_WRITE_STALL_TIMEOUT {
            return;
        }
        tokio::time::sleep(PEER_WRITE_STALL_TIMEOUT - idle).await;
    }
}

/// Runs one connection until either side closes it.
pub async fn run(
    stream: TcpStream,
    id: PeerId,
    addr: SocketAddr,
    dialed: Option<SocketAddr>,
    magic: [u8; 4],
    events: mpsc::Sender<Event>,
    node_budget: Arc<Semaphore>,
) {
    let (outbox_tx, outbox) = mpsc::channel::<OutFrame>(PEER_SEND_QUEUE);
    let queued = Arc::new(AtomicUsize::new(0));
    let close = CancellationToken::new();
    let link = PeerLink {
        outbox: outbox_tx,
        queued: queued.clone(),
        close: close.clone(),
    };
    if events
        .send(Event::Connected {
            id,
            addr,
            dialed,
            link,
        })
        .await
        .is_err()
    {
        return;
    }
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    // The writer runs on its own, so that waiting for room to queue a
    // received message never stops our answers from going out.
    let writer = tokio::spawn(write_frames(
        id,
        writer,
        magic,
        outbox,
        queued,
        close.clone(),
    ));
    let mut input = FramedRead::new(reader, FrameCodec::new(magic));
    let peer_budget = Arc::new(Semaphore::new(PEER_INBOUND_QUEUE_BYTES));
    let mut budget = Budget::new();
    let (mut saw_version, mut saw_verack) = (false, false);
    loop {
        tokio::select! {
            _ = close.cancelled() => break,
            frame = input.next() => {
                let frame = match frame {
                    None => break,
                    Some(Ok(frame)) => frame,
                    Some(Err(FrameError::Io(_))) => break,
                    Some(Err(error)) => {
                        tracing::debug!(peer = id, %error, "bad frame");
                        let _ = events.send(Event::Violation(id, error.reason())).await;
                        break;
                    }
                };
                // A block has arrived once its frame has, however long it
                // then waits for the budgets below (behind a chain task
                // busy connecting): the protocol stops its stall clock now,
                // or a throttled honest peer would be dropped as stalling.
                if let Some(hash) = block_frame_hash(&frame) {
                    if events.send(Event::BlockArrived(id, hash)).await.is_err() {
                        break;
                    }
                }
                if let Some(wait) = budget.take() {
                    tokio::time::sleep(wait).await;
                }
                // Wait for room in the peer's and the node's budget (not
                // reading meanwhile), or for the close, before decoding: a
                // message waiting for room holds only its frame, and what
                // it decodes to is counted from the frame's command and
                // length.
                let cost = inbound_cost(&frame.command, frame.payload.len());
                let permit = tokio::select! {
                    _ = close.cancelled() => break,
                    permits = async {
                        let peer = peer_budget.clone().acquire_many_owned(cost).await;
                        let node = node_budget.clone().acquire_many_owned(cost).await;
                        peer.ok().zip(node.ok())
                    } => match permits {
                        Some((peer, node)) => InboundPermit::new(peer, node),
                        None => break,
                    },
                };
                match Message::decode(&frame.command, &frame.payload) {
                    Ok(message) => {
                        TRAFFIC.received(message.command(), frame.payload.len());
                        match &message {
                            Message::Version(_) => saw_version = true,
                            Message::Verack => saw_verack = true,
                            _ => {}
                        }
                        if saw_version && saw_verack {
                            input.decoder_mut().set_max_payload(MAX_PAYLOAD);
                        }
                        drop(frame);
                        if events.send(Event::Message(id, message, permit)).await.is_err() {
                            break;
                        }
                    }
                    Err(MessageError::UnknownCommand(command)) => {
                        TRAFFIC.received(UNKNOWN_COMMAND, frame.payload.len());
                        let _ = events.send(Event::UnknownCommand(id, command)).await;
                    }
                    Err(error) => {
                        tracing::debug!(peer = id, %error, "malformed message");
                        let _ = events.send(Event::Violation(id, "malformed_payload")).await;
                        break;
                    }
                }
            }
        }
    }
    // Whichever side ended first ends the other.
    close.cancel();
    let _ = writer.await;
    let _ = events.send(Event::Disconnected(id)).await;
}

/// Writes the frames the protocol queued until the connection closes, a
/// write fails, or a write makes no progress for `PEER_WRITE_STALL_TIMEOUT`.
async fn write_frames(
    id: PeerId,
    writer: OwnedWriteHalf,
    magic: [u8; 4],
    mut outbox: mpsc::Receiver<OutFrame>,
    queued: Arc<AtomicUsize>,
    close: CancellationToken,
) {
    let start = Instant::now();
    let last_progress = Arc::new(AtomicU64::new(0));
    let writer = ProgressWriter {
        inner: writer,
        start,
        last: last_progress.clone(),
    };
    let mut output = FramedWrite::new(writer, FrameCodec::new(magic));
    output.encoder_mut().set_max_payload(MAX_PAYLOAD);
    loop {
        let frame = tokio::select! {
            _ = close.cancelled() => break,
            frame = outbox.recv() => match frame {
                Some(frame) => frame,
                None => break,
            },
        };
        let len = frame.wire_len();
        TRAFFIC.sent(frame.command, frame.payload.len());
        let raw = RawFrame {
            command: frame.command.to_string(),
            payload: frame.payload,
        };
        ProgressWriter::<()>::mark(start, &last_progress);
        let written = tokio::select! {
            _ = close.cancelled() => false,
            _ = write_stalled(start, &last_progress) => {
                tracing::info!(peer = id, "write made no progress: disconnecting");
                false
            }
            result = output.send(raw) => result.is_ok(),
        };
        queued.fetch_sub(len, Ordering::Relaxed);
        if !written {
            break;
        }
    }
    close.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::params::Network;
    use crate::encoding::Encode;

    #[test]
    fn a_block_frame_is_known_by_its_header_before_it_is_decoded() {
        let block = &Network::Regtest.params().genesis_block();
        let mut payload = block.to_bytes();
        let frame = |command: &str, payload: &[u8]| RawFrame {
            command: command.to_string(),
            payload: Bytes::copy_from_slice(payload),
        };
        assert_eq!(
            block_frame_hash(&frame("block", &payload)),
            Some(block.hash())
        );
        // The body is not looked at: a frame cut after the header names the
        // same block (its decoding fails later and ends the connection).
        payload.truncate(HEADER_LEN);
        assert_eq!(
            block_frame_hash(&frame("block", &payload)),
            Some(block.hash())
        );
        assert_eq!(
            block_frame_hash(&frame("block", &payload[..HEADER_LEN - 1])),
            None
        );
        assert_eq!(block_frame_hash(&frame("tx", &block.to_bytes())), None);
    }
}
