//! Every limit of the wire protocol, with why it has the value it has.

use std::time::Duration;

/// Protocol version this software speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Oldest protocol version we accept from a peer.
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// Service bit: the node serves full blocks.
pub const SERVICE_NETWORK: u64 = 1;

/// Frame header: magic (4) + command (12) + length (4) + checksum (4).
pub const FRAME_HEADER_LEN: usize = 24;
/// Length of the NUL-padded command field.
pub const COMMAND_LEN: usize = 12;

/// Largest payload before the handshake is done: a `version` message with a
/// full user agent is under 300 bytes; 1 KiB leaves room and stops anyone
/// who has not said hello from making us buffer megabytes.
pub const MAX_HANDSHAKE_PAYLOAD: usize = 1024;
/// Largest payload after the handshake: a maximum-size block (1 MB) with
/// room to spare for a maximum-size `inv`/`getdata` (50 000 x 36 bytes).
pub const MAX_PAYLOAD: usize = 4 * 1024 * 1024;
/// Room the frame decoder sets aside for a payload when its header
/// arrives: the rest grows with the bytes that do arrive, so a header that
/// announces 4 MiB and sends nothing more costs 64 KiB, not 4 MiB (a
/// partly received frame is held outside the inbound budgets).
pub const PAYLOAD_RESERVE_UPFRONT: usize = 64 * 1024;

/// Largest `block` payload: a block of the consensus limit, no more.
pub const MAX_BLOCK_PAYLOAD: usize = crate::consensus::limits::MAX_BLOCK_SIZE;
/// Largest `tx` payload: a transaction of the consensus limit.
pub const MAX_TX_PAYLOAD: usize = crate::consensus::limits::MAX_TX_SIZE;
/// Largest `headers` payload: `MAX_HEADERS` headers of 80 bytes after
/// their count.
pub const MAX_HEADERS_PAYLOAD: usize = 3 + MAX_HEADERS * 80;

/// The largest payload a frame of `command` may announce after the
/// handshake: a `block`, `tx` or `headers` above its own limit can only be
/// refused once decoded, so its frame is refused before its payload is
/// buffered. Every other command has `MAX_PAYLOAD`.
pub fn max_payload_of(command: &str) -> usize {
    match command {
        "block" => MAX_BLOCK_PAYLOAD,
        "tx" => MAX_TX_PAYLOAD,
        "headers" => MAX_HEADERS_PAYLOAD,
        _ => MAX_PAYLOAD,
    }
}

/// Most entries in `addr`, as Bitcoin: enough to share a useful sample.
pub const MAX_ADDR_ENTRIES: usize = 1000;
/// Most entries in `inv`, `getdata` and `notfound` (36 bytes each, 1.8 MB).
pub const MAX_INV_ENTRIES: usize = 50_000;
/// Most hashes in a block locator: about 10 dense + log2(height) sparse
/// entries cover any chain below 2^90 blocks.
pub const MAX_LOCATOR_HASHES: usize = 101;
/// Most headers in one `headers` message (81 bytes each incl. the tx count
/// byte Bitcoin sends; ours are 80): 160 KB per message.
pub const MAX_HEADERS: usize = 2000;
/// Longest user agent string.
pub const MAX_USER_AGENT_LEN: usize = 256;

/// A peer that has not completed the handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often we ping a quiet peer.
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
/// A peer that has not answered a ping by then is dead.
pub const PING_TIMEOUT: Duration = Duration::from_secs(60);

/// Messages a peer may send per second on average (token bucket refill),
/// and the burst it may send at once. Beyond that we stop reading from its
/// socket (TCP backpressure) instead of buffering.
pub const PEER_MESSAGES_PER_SEC: u32 = 1000;
pub const PEER_MESSAGE_BURST: u32 = 4000;
/// Messages queued for one peer before it counts as too slow and is
/// dropped (besides the byte bounds below, which are what bound memory).
pub const PEER_SEND_QUEUE: usize = 1024;
/// `getdata` is served to a peer only while less than this many bytes wait
/// to be written to its socket (Bitcoin Core's send buffer limit): a
/// request for a thousand blocks costs one block of memory at a time.
pub const PEER_SEND_BUFFER_SOFT_BYTES: usize = 1024 * 1024;
/// Requests (`getheaders`, `ping`, `mempool`, `getaddr`) a peer may have
/// waiting while its answers are held back (`PEER_SEND_BUFFER_SOFT_BYTES`
/// or more wait for its socket); past it the peer is dropped
/// (`send_paused_requests`): it asks without reading. An honest peer
/// downloading blocks has a ping every 30 s and a `getheaders` per block
/// announced waiting at most. Held requests keep their inbound budget: 16
/// of the largest (`MAX_REQUEST_PAYLOAD`) count 109 KB, so every peer slot
/// paused at once holds under a quarter of `INBOUND_QUEUE_BYTES` (checked
/// in `p2p`), and paused peers cannot stop the node reading the others.
pub const PEER_PAUSED_REQUESTS: usize = 16;
/// The largest payload of a request that is held back while its sender is
/// paused: a `getheaders` with a full locator (a count of up to 3 bytes,
/// the hashes, the stop hash).
pub const MAX_REQUEST_PAYLOAD: usize = 3 + MAX_LOCATOR_HASHES * 32 + 32;
/// Bytes queued for one peer beyond which it is dropped: the soft limit plus
/// two maximum-size messages, reached only by a peer that does not read.
pub const PEER_SEND_BUFFER_MAX_BYTES: usize = PEER_SEND_BUFFER_SOFT_BYTES + 2 * MAX_PAYLOAD;
/// A write to a peer that makes no progress for this long closes the
/// connection and frees everything the peer held (a peer that stops reading
/// fills its socket buffer, then stalls every write).
pub const PEER_WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Received messages of one peer waiting for the protocol thread, counted
/// as twice the payload (the frame, then about what decoding takes; more
/// for a block or transaction, `DECODED_TX_BYTES_PER_PAYLOAD_BYTE`) plus a
/// fixed cost per message: two maximum-size messages. When full, we stop
/// reading its socket.
pub const PEER_INBOUND_QUEUE_BYTES: usize = 4 * MAX_PAYLOAD;
/// Received messages of all peers waiting for the protocol thread, counted
/// the same way: the node-wide bound on that queue.
pub const INBOUND_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Fixed memory cost counted for every queued message (event and
/// allocation overhead), so that floods of tiny messages are bounded too.
pub const QUEUED_MESSAGE_OVERHEAD_BYTES: usize = 256;
/// What a received `block` or `tx` counts per byte of its payload instead
/// of two: its frame (one), and its decoded transactions, which take at
/// most `size_of::<Transaction>()` bytes per `MIN_TX_LEN` of payload (a
/// transaction with neither inputs nor outputs; inputs and outputs take
/// less per byte, checked below), plus one for allocation overhead. A
/// block of the smallest transactions decodes to about six times its
/// bytes: counted at two, 1 MB would hold 7 MB against 2 MB counted.
pub const DECODED_TX_BYTES_PER_PAYLOAD_BYTE: usize = 1 + DECODED_TX_EXPANSION + 1;
const DECODED_TX_EXPANSION: usize =
    std::mem::size_of::<crate::consensus::transaction::Transaction>()
        .div_ceil(crate::consensus::limits::MIN_TX_LEN);
const _: () = assert!(
    std::mem::size_of::<crate::consensus::transaction::TxIn>()
        <= DECODED_TX_EXPANSION * crate::consensus::limits::COINBASE_INPUT_LEN
);
const _: () = assert!(
    std::mem::size_of::<crate::consensus::transaction::TxOut>()
        <= DECODED_TX_EXPANSION * crate::consensus::limits::OUTPUT_LEN
);
// A block of the largest size fits one peer's budget with room for one more.
const _: () =
    assert!(2 * DECODED_TX_BYTES_PER_PAYLOAD_BYTE * MAX_BLOCK_PAYLOAD <= PEER_INBOUND_QUEUE_BYTES);
