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
/// dropped; bounds our memory per peer to this many messages.
pub const PEER_SEND_QUEUE: usize = 1024;
