//! One task per TCP connection: decodes frames into messages for the
//! protocol and writes the messages the protocol sends. It raises the frame
//! size limit once the peer's handshake is complete and throttles a peer
//! that sends faster than its message budget by not reading its socket.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};

use super::protocol::PeerId;
use super::traffic::{TRAFFIC, UNKNOWN_COMMAND};
use super::Event;
use crate::wire::constants::{MAX_PAYLOAD, PEER_MESSAGES_PER_SEC, PEER_MESSAGE_BURST};
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

/// Runs one connection until either side closes it.
pub async fn run(
    stream: TcpStream,
    id: PeerId,
    addr: SocketAddr,
    dialed: Option<SocketAddr>,
    magic: [u8; 4],
    events: mpsc::Sender<Event>,
    outbox_size: usize,
) {
    let (outbox_tx, mut outbox) = mpsc::channel::<Message>(outbox_size);
    if events
        .send(Event::Connected {
            id,
            addr,
            dialed,
            outbox: outbox_tx,
        })
        .await
        .is_err()
    {
        return;
    }
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    let mut input = FramedRead::new(reader, FrameCodec::new(magic));
    let mut output = FramedWrite::new(writer, FrameCodec::new(magic));
    output.encoder_mut().set_max_payload(MAX_PAYLOAD);
    let mut budget = Budget::new();
    let (mut saw_version, mut saw_verack) = (false, false);
    loop {
        tokio::select! {
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
                if let Some(wait) = budget.take() {
                    tokio::time::sleep(wait).await;
                }
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
                        if events.send(Event::Message(id, message)).await.is_err() {
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
            message = outbox.recv() => {
                let Some(message) = message else { break };
                let frame = RawFrame {
                    command: message.command().to_string(),
                    payload: Bytes::from(message.encode_payload()),
                };
                TRAFFIC.sent(message.command(), frame.payload.len());
                if output.send(frame).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = events.send(Event::Disconnected(id)).await;
}
