//! The address book, after Bitcoin Core's addrman: addresses we heard of sit
//! in the `new` table, addresses we completed a handshake with in the
//! `tried` table. Both tables are arrays of fixed-size buckets, and where an
//! address may go is decided by a hash keyed with a secret of this node:
//! - a `new` address goes to one of a few buckets chosen by the group of the
//!   peer that told us (its source) and the address's own group, so one
//!   source, however many addresses it sends, fills at most
//!   `NEW_BUCKETS_PER_SOURCE_GROUP` buckets, and all its addresses of one
//!   group fall into one bucket;
//! - a `tried` address goes to one of `TRIED_BUCKETS_PER_GROUP` buckets of
//!   its group;
//! - within a bucket the slot is fixed by the address, and a newcomer takes a
//!   slot only from an entry that is worthless (`is_terrible`).
//!
//! Since the secret key decides the buckets, an attacker cannot aim
//! addresses at slots. Every operation touches a constant number of slots
//! and entries: nothing scans the book except `save`. The book is saved as
//! JSON (format version 2, with the key, so buckets survive a restart) in
//! the data dir; the unversioned format of earlier releases is read too.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::consensus::params::Network;

use super::netgroup::{canonical, is_acceptable, NetGroup};

/// Buckets of the new table. Bitcoin Core has 1024 buckets of 64 for a
/// network of tens of thousands of listening nodes; ChainCore's network is
/// far smaller, so a quarter: 256 × 64 = 16 384 addresses, about 2 MB.
pub const NEW_BUCKET_COUNT: usize = 256;
/// Buckets of the tried table: a quarter of Core's 256, 64 × 64 = 4096
/// addresses, still far more than the peers a node ever completes a
/// handshake with between restarts.
pub const TRIED_BUCKET_COUNT: usize = 64;
/// Slots per bucket, as in Bitcoin Core.
pub const BUCKET_SIZE: usize = 64;
/// New buckets the addresses from one source group can reach: Core's share,
/// 1/16 of the table (64 of 1024), so one source group holds at most
/// 16 × 64 = 1024 of the 16 384 new slots.
pub const NEW_BUCKETS_PER_SOURCE_GROUP: u64 = 16;
/// Tried buckets the addresses of one group can reach: Core's share, 1/32
/// of the table (8 of 256), so one group holds at most 128 tried slots.
pub const TRIED_BUCKETS_PER_GROUP: u64 = 2;
/// New buckets one address may sit in at once (heard of from several
/// sources), as in Core; each further one is half as likely as the last.
pub const NEW_BUCKETS_PER_ADDRESS: usize = 8;
/// A timestamp further than this ahead of our clock is not believed.
pub const ADDR_FUTURE_TOLERANCE: u32 = 10 * 60;
/// The age given to an address whose timestamp is not believed (in the
/// future, or before 1973): five days, old enough to rank below fresh
/// addresses, young enough to stay in the book (Core does the same).
pub const ADDR_UNBELIEVED_AGE: u32 = 5 * 24 * 60 * 60;
/// Timestamps before this (March 1973) are not believed either.
pub const ADDR_MIN_BELIEVED_TIME: u32 = 100_000_000;
/// Subtracted from the timestamp of an address relayed by someone else than
/// the address itself, so relays cannot make an address look fresher than
/// its own announcement (Core: two hours).
pub const ADDR_RELAY_PENALTY: u32 = 2 * 60 * 60;
/// An address not seen for this long is worthless (Core: 30 days).
pub const ADDR_HORIZON: u32 = 30 * 24 * 60 * 60;
/// Failed attempts after which a never-successful address is worthless.
pub const ADDR_RETRIES: u32 = 3;
/// Failed attempts after which an address not successful for
/// `ADDR_MIN_FAIL` is worthless.
pub const ADDR_MAX_FAILURES: u32 = 10;
/// See `ADDR_MAX_FAILURES`.
pub const ADDR_MIN_FAIL: u32 = 7 * 24 * 60 * 60;
/// An address tried this recently is never judged worthless (it may be
/// replaced only once the attempt has had time to finish).
pub const ADDR_RECENT_TRY: u32 = 60;
/// An address tried this recently is unlikely to be picked again.
pub const ADDR_RETRY_SOON: u32 = 10 * 60;
/// Random entries examined to pick one address to dial: bounds the cost of
/// a pick, whatever the book holds.
pub const SELECT_PROBES: usize = 64;
/// At most this share of the book, in percent, goes to one `getaddr`
/// answer (Core: 23), so no peer learns the whole book from one question.
pub const GETADDR_MAX_PERCENT: usize = 23;
/// Random entries examined per address wanted in a `getaddr` answer.
pub const GETADDR_PROBES_PER_ADDRESS: usize = 4;
/// First wait after a failed attempt; doubles with every failure.
pub const MIN_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Longest wait between attempts to one address.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(120);
/// Name of the address book file in the data dir.
pub const ADDRBOOK_FILE: &str = "peers.json";
/// Name a corrupt address book is moved to, so it is kept for a look and
/// not overwritten.
pub const ADDRBOOK_CORRUPT_FILE: &str = "peers.json.corrupt";
/// Format version written by this release.
pub const ADDRBOOK_FORMAT_VERSION: u32 = 2;
/// A larger file is refused without being parsed: a full book is about
/// 20 480 entries of some 150 bytes of JSON, 3 MB.
pub const MAX_ADDRBOOK_FILE_BYTES: u64 = 16 << 20;

/// Addresses at most whose move to the tried table waits for a test of
/// the entry holding their slot (Bitcoin Core's
/// `ADDRMAN_SET_TRIED_COLLISION_SIZE`); past it a handshake moves nothing.
pub const TRIED_COLLISIONS_MAX: usize = 10;

/// A tried entry that connected this recently keeps its slot against a
/// newcomer without a test (`ADDRMAN_REPLACEMENT`).
pub const TRIED_REPLACEMENT_WINDOW: u32 = 4 * 60 * 60;

/// How long a collision waits for its test: past it, an entry tried in the
/// meantime without success, or never tried, loses its slot
/// (`ADDRMAN_TEST_WINDOW`).
pub const TRIED_TEST_WINDOW: u32 = 40 * 60;

/// A dial of the holder that has not connected this long after it began
/// failed the test.
pub const TRIED_TEST_TIMEOUT: u32 = 60;

/// Why a saved address book could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AddrBookError {
    #[error("reading the address book {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the address book {path} has {size} bytes, more than the {MAX_ADDRBOOK_FILE_BYTES} a full book needs")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("the address book {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("the address book {path} has format version {version}; this release reads versions 1 and {ADDRBOOK_FORMAT_VERSION}")]
    UnsupportedVersion { path: PathBuf, version: u64 },
}

/// Where an entry sits.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    /// In these new buckets (1 to `NEW_BUCKETS_PER_ADDRESS`).
    New(Vec<u16>),
    /// In this tried bucket.
    Tried(u16),
}

#[derive(Debug, Clone)]
struct Entry {
    /// Who told us of the address (the address itself for one we dialed).
    source: IpAddr,
    /// Unix seconds the address was last announced or connected.
    last_seen: u32,
    /// Unix seconds of the last completed handshake (0: never).
    last_success: u32,
    /// Unix seconds of the last dial (0: never).
    last_try: u32,
    /// Failed dials since the last success.
    attempts: u32,
    place: Place,
    /// Position in `new_ids` or `tried_ids`, for O(1) removal.
    index: usize,
    /// Not dialed before then (not saved: backoff restarts with the node).
    next_attempt: Option<Instant>,
}

impl Entry {
    fn is_tried(&self) -> bool {
        matches!(self.place, Place::Tried(_))
    }

    /// Whether the entry is worthless and may be replaced: a timestamp in
    /// the future, too old, or too many failures (Core's `IsTerrible`).
    fn is_terrible(&self, now: u32) -> bool {
        if self.last_try != 0 && now.saturating_sub(self.last_try) < ADDR_RECENT_TRY {
            return false;
        }
        if self.last_seen > now.saturating_add(ADDR_FUTURE_TOLERANCE) {
            return true;
        }
        if now.saturating_sub(self.last_seen) > ADDR_HORIZON {
            return true;
        }
        if self.last_success == 0 && self.attempts >= ADDR_RETRIES {
            return true;
        }
        now.saturating_sub(self.last_success) > ADDR_MIN_FAIL && self.attempts >= ADDR_MAX_FAILURES
    }

    /// Relative chance of being picked to dial: recently tried and often
    /// failed addresses are picked less (Core's `GetChance`).
    fn chance(&self, now: u32) -> f64 {
        let mut chance = 1.0;
        if now.saturating_sub(self.last_try) < ADDR_RETRY_SOON {
            chance *= 0.01;
        }
        chance * 0.66f64.powi(self.attempts.min(8) as i32)
    }
}

/// The timestamp an address is recorded with: a time in the future (beyond
/// `ADDR_FUTURE_TOLERANCE`) or implausibly early is taken as five days old.
pub fn believed_time(time: u32, now: u32) -> u32 {
    if time < ADDR_MIN_BELIEVED_TIME || time > now.saturating_add(ADDR_FUTURE_TOLERANCE) {
        now.saturating_sub(ADDR_UNBELIEVED_AGE)
    } else {
        time
    }
}

/// An address in canonical form (IPv4-mapped IPv6 as IPv4).
fn canonical_socket(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(addr.ip()), addr.port())
}

/// The 18 bytes an address is hashed as: IPv6 form, then the port.
fn socket_bytes(addr: &SocketAddr) -> [u8; 18] {
    let v6 = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let mut out = [0u8; 18];
    out[..16].copy_from_slice(&v6.octets());
    out[16..].copy_from_slice(&addr.port().to_be_bytes());
    out
}

/// Domain tags of the keyed hashes, so no two uses can collide.
const TAG_NEW_GROUP: u8 = 1;
const TAG_NEW_BUCKET: u8 = 2;
const TAG_TRIED_ADDR: u8 = 3;
const TAG_TRIED_BUCKET: u8 = 4;
const TAG_POSITION_NEW: u8 = 5;
const TAG_POSITION_TRIED: u8 = 6;
const TAG_GROUP: u8 = 7;

/// The address book. See the module documentation.
pub struct AddrBook {
    network: Network,
    /// Secret of this node that places addresses in buckets. SHA-256 keyed
    /// with it, as Core does, rather than std's SipHash `RandomState`: the
    /// latter's keys can be neither set nor read, so they could not be saved
    /// and every restart would move every address to another slot, dropping
    /// those that collide.
    key: [u8; 32],
    entries: HashMap<SocketAddr, Entry>,
    new_slots: Vec<Option<SocketAddr>>,
    tried_slots: Vec<Option<SocketAddr>>,
    new_ids: Vec<SocketAddr>,
    tried_ids: Vec<SocketAddr>,
    rng: StdRng,
    path: Option<PathBuf>,
    /// Entries and slots examined since creation: tests check that each
    /// operation costs a bounded number, whatever the size of the book.
    work: u64,
    /// New-table addresses that completed a handshake while their tried
    /// slot held another address, with when: the holder is tested (a
    /// feeler dials it) before it is evicted, so that an attacker's fresh
    /// addresses cannot push out peers that work (Bitcoin Core's test
    /// before evict). Not saved: a restart forgets them.
    collisions: HashMap<SocketAddr, u32>,
}

impl std::fmt::Debug for AddrBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddrBook")
            .field("network", &self.network)
            .field("new", &self.new_ids.len())
            .field("tried", &self.tried_ids.len())
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// One entry of the saved book (format version 2).
#[derive(Debug, Serialize, Deserialize)]
struct SavedEntry {
    addr: SocketAddr,
    source: IpAddr,
    last_seen: u32,
    #[serde(default)]
    last_success: u32,
    #[serde(default)]
    attempts: u32,
    tried: bool,
}

/// The saved book (format version 2).
#[derive(Debug, Serialize, Deserialize)]
struct SavedBook {
    version: u32,
    /// The bucket key, hex.
    key: String,
    entries: Vec<SavedEntry>,
}

/// One entry of the unversioned format of earlier releases: a map from
/// address to this.
#[derive(Debug, Deserialize)]
struct SavedEntryV1 {
    tried: bool,
    last_seen: u32,
}

impl AddrBook {
    /// An empty book with a fresh random key, kept in memory only.
    pub fn new(network: Network) -> AddrBook {
        AddrBook {
            network,
            key: rand::random(),
            entries: HashMap::new(),
            new_slots: vec![None; NEW_BUCKET_COUNT * BUCKET_SIZE],
            tried_slots: vec![None; TRIED_BUCKET_COUNT * BUCKET_SIZE],
            new_ids: Vec::new(),
            tried_ids: Vec::new(),
            rng: StdRng::from_entropy(),
            path: None,
            work: 0,
            collisions: HashMap::new(),
        }
    }

    /// Loads the book from `data_dir`; a missing file gives an empty book
    /// that will be saved there.
    pub fn load(data_dir: &Path, network: Network) -> Result<AddrBook, AddrBookError> {
        let path = data_dir.join(ADDRBOOK_FILE);
        let mut book = AddrBook::new(network);
        book.path = Some(path.clone());
        let read_error = |source| AddrBookError::Read {
            path: path.clone(),
            source,
        };
        let size = match std::fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(book),
            Err(e) => return Err(read_error(e)),
        };
        if size > MAX_ADDRBOOK_FILE_BYTES {
            return Err(AddrBookError::TooLarge { path, size });
        }
        let bytes = std::fs::read(&path).map_err(read_error)?;
        let corrupt = |reason: String| AddrBookError::Corrupt {
            path: path.clone(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let now = crate::chain::unix_now();
        match value.get("version") {
            Some(version) => {
                let version = version
                    .as_u64()
                    .ok_or_else(|| corrupt(format!("version {version} is not a number")))?;
                if version != u64::from(ADDRBOOK_FORMAT_VERSION) {
                    return Err(AddrBookError::UnsupportedVersion { path, version });
                }
                let saved: SavedBook =
                    serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?;
                let key = hex::decode(&saved.key)
                    .ok()
                    .and_then(|k| <[u8; 32]>::try_from(k).ok())
                    .ok_or_else(|| corrupt(format!("key {:?} is not 32 hex bytes", saved.key)))?;
                book.key = key;
                // Tried first: they were placed there with this key, so they
                // find their slots again; new ones fill in around them.
                for entry in saved.entries.iter().filter(|e| e.tried) {
                    book.restore_tried(entry, now);
                }
                for entry in saved.entries.iter().filter(|e| !e.tried) {
                    book.restore_new(entry, now);
                }
            }
            None => {
                let saved: HashMap<SocketAddr, SavedEntryV1> =
                    serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?;
                for (addr, entry) in saved {
                    let restored = SavedEntry {
                        addr,
                        source: addr.ip(),
                        last_seen: entry.last_seen,
                        last_success: if entry.tried { entry.last_seen } else { 0 },
                        attempts: 0,
                        tried: entry.tried,
                    };
                    if entry.tried {
                        book.restore_tried(&restored, now);
                    } else {
                        book.restore_new(&restored, now);
                    }
                }
            }
        }
        Ok(book)
    }

    /// Loads the book from `data_dir`; if it cannot be read, says why, keeps
    /// a corrupt file aside as `ADDRBOOK_CORRUPT_FILE` and starts an empty
    /// book: addresses are a cache, never a reason not to start.
    pub fn open(data_dir: &Path, network: Network) -> AddrBook {
        match AddrBook::load(data_dir, network) {
            Ok(book) => book,
            Err(error) => {
                tracing::warn!(%error, "starting with an empty address book");
                if !matches!(error, AddrBookError::Read { .. }) {
                    let aside = data_dir.join(ADDRBOOK_CORRUPT_FILE);
                    if let Err(e) = std::fs::rename(data_dir.join(ADDRBOOK_FILE), &aside) {
                        tracing::warn!(error = %e, path = %aside.display(), "could not move the corrupt address book aside");
                    }
                }
                let mut book = AddrBook::new(network);
                book.path = Some(data_dir.join(ADDRBOOK_FILE));
                book
            }
        }
    }

    fn restore_tried(&mut self, saved: &SavedEntry, now: u32) {
        let addr = canonical_socket(saved.addr);
        if !self.acceptable(&addr) || self.entries.contains_key(&addr) {
            return;
        }
        let seen = believed_time(saved.last_seen, now);
        self.make_tried(addr, seen, canonical(saved.source));
        if let Some(entry) = self.entries.get_mut(&addr) {
            entry.last_success = saved.last_success.min(seen);
            entry.attempts = saved.attempts;
        }
    }

    fn restore_new(&mut self, saved: &SavedEntry, now: u32) {
        // As saved: the relay penalty was taken when the address came in.
        let (addr, source) = (canonical_socket(saved.addr), canonical(saved.source));
        let seen = believed_time(saved.last_seen, now);
        if self.place_new(addr, source, seen, now) {
            if let Some(entry) = self.entries.get_mut(&addr) {
                entry.last_success = saved.last_success;
                entry.attempts = saved.attempts;
            }
        }
    }

    /// Addresses in the book.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Addresses in the new table.
    pub fn new_count(&self) -> usize {
        self.new_ids.len()
    }

    /// Addresses in the tried table.
    pub fn tried_count(&self) -> usize {
        self.tried_ids.len()
    }

    /// Whether `addr` is in the book.
    pub fn contains(&self, addr: &SocketAddr) -> bool {
        self.entries.contains_key(&canonical_socket(*addr))
    }

    /// Entries and slots examined so far (see the field).
    pub fn work(&self) -> u64 {
        self.work
    }

    /// The group `group` hashed with this node's key: peers cannot predict
    /// which groups inbound eviction protects by this value.
    pub fn keyed_group(&self, group: NetGroup) -> u64 {
        self.hash(TAG_GROUP, &[&group.to_bytes()])
    }

    /// Writes the book whole, never torn (`files::replace_file`), readable
    /// by its owner only.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let entries = self
            .entries
            .iter()
            .map(|(addr, e)| SavedEntry {
                addr: *addr,
                source: e.source,
                last_seen: e.last_seen,
                last_success: e.last_success,
                attempts: e.attempts,
                tried: e.is_tried(),
            })
            .collect();
        let saved = SavedBook {
            version: ADDRBOOK_FORMAT_VERSION,
            key: hex::encode(self.key),
            entries,
        };
        // It holds the book's secret key (which places addresses in
        // buckets): readable by the node's user only.
        crate::files::replace_file(
            path,
            &serde_json::to_vec(&saved)?,
            crate::files::Readers::Owner,
        )
    }

    fn acceptable(&self, addr: &SocketAddr) -> bool {
        addr.port() != 0 && is_acceptable(addr.ip(), self.network)
    }

    /// SHA-256 of the key, a tag and `parts`, as a number.
    fn hash(&self, tag: u8, parts: &[&[u8]]) -> u64 {
        let mut hasher = Sha256::new();
        hasher.update(self.key);
        hasher.update([tag]);
        for part in parts {
            hasher.update(part);
        }
        let digest = hasher.finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
    }

    fn new_bucket(&self, addr: &SocketAddr, source_group: NetGroup) -> usize {
        let group = NetGroup::of(addr.ip()).to_bytes();
        let source = source_group.to_bytes();
        let spread = self.hash(TAG_NEW_GROUP, &[&group, &source]) % NEW_BUCKETS_PER_SOURCE_GROUP;
        (self.hash(TAG_NEW_BUCKET, &[&source, &spread.to_le_bytes()]) % NEW_BUCKET_COUNT as u64)
            as usize
    }

    fn tried_bucket(&self, addr: &SocketAddr) -> usize {
        let group = NetGroup::of(addr.ip()).to_bytes();
        let spread = self.hash(TAG_TRIED_ADDR, &[&socket_bytes(addr)]) % TRIED_BUCKETS_PER_GROUP;
        (self.hash(TAG_TRIED_BUCKET, &[&group, &spread.to_le_bytes()]) % TRIED_BUCKET_COUNT as u64)
            as usize
    }

    /// The slot index of `addr` in bucket `bucket` of one table.
    fn slot(&self, tried: bool, bucket: usize, addr: &SocketAddr) -> usize {
        let tag = if tried {
            TAG_POSITION_TRIED
        } else {
            TAG_POSITION_NEW
        };
        let position = self.hash(tag, &[&(bucket as u16).to_le_bytes(), &socket_bytes(addr)])
            % BUCKET_SIZE as u64;
        bucket * BUCKET_SIZE + position as usize
    }

    fn ids(&mut self, tried: bool) -> &mut Vec<SocketAddr> {
        if tried {
            &mut self.tried_ids
        } else {
            &mut self.new_ids
        }
    }

    /// Takes the entry at `index` out of the random-access list of its table.
    fn unlist(&mut self, tried: bool, index: usize) {
        let ids = self.ids(tried);
        ids.swap_remove(index);
        if let Some(moved) = ids.get(index).copied() {
            if let Some(entry) = self.entries.get_mut(&moved) {
                entry.index = index;
            }
        }
    }

    /// Removes `addr`'s reference from new bucket `bucket`; an entry left in
    /// no bucket is forgotten.
    fn drop_new_ref(&mut self, addr: SocketAddr, bucket: u16) {
        let slot = self.slot(false, usize::from(bucket), &addr);
        self.work += 1;
        if self.new_slots[slot] == Some(addr) {
            self.new_slots[slot] = None;
        }
        let Some(entry) = self.entries.get_mut(&addr) else {
            return;
        };
        let Place::New(buckets) = &mut entry.place else {
            return;
        };
        buckets.retain(|b| *b != bucket);
        if buckets.is_empty() {
            let index = entry.index;
            self.entries.remove(&addr);
            self.unlist(false, index);
        }
    }

    /// Records an address that `source` told us of, seen at `time` (unix
    /// seconds; one in the future counts as old). Refused: non-routable
    /// addresses on main and test, port 0, and an address whose slot holds
    /// a worthy other one. Returns whether the address took a new slot.
    pub fn add_new(&mut self, addr: SocketAddr, source: IpAddr, time: u32, now: u32) -> bool {
        let addr = canonical_socket(addr);
        let source = canonical(source);
        let mut time = believed_time(time, now);
        if source != addr.ip() {
            time = time.saturating_sub(ADDR_RELAY_PENALTY);
        }
        self.place_new(addr, source, time, now)
    }

    /// Puts `addr` (canonical) in the new bucket `source` gives it, seen at
    /// `time` (already believed), if its slot is free or worthless.
    fn place_new(&mut self, addr: SocketAddr, source: IpAddr, time: u32, now: u32) -> bool {
        if !self.acceptable(&addr) {
            return false;
        }
        let bucket = self.new_bucket(&addr, NetGroup::of(source));
        let slot = self.slot(false, bucket, &addr);
        self.work += 1;
        let refs = match self.entries.get_mut(&addr) {
            Some(entry) => {
                entry.last_seen = entry.last_seen.max(time);
                let Place::New(buckets) = &entry.place else {
                    return false;
                };
                if buckets.contains(&(bucket as u16)) || buckets.len() >= NEW_BUCKETS_PER_ADDRESS {
                    return false;
                }
                buckets.len()
            }
            None => 0,
        };
        // Each further bucket is half as likely: an address that many
        // sources repeat does not take over many buckets.
        if refs > 0 && !self.rng.gen_ratio(1, 1 << refs) {
            return false;
        }
        if let Some(other) = self.new_slots[slot] {
            let occupant = &self.entries[&other];
            let occupant_refs = match &occupant.place {
                Place::New(b) => b.len(),
                Place::Tried(_) => 0,
            };
            let replace = occupant.is_terrible(now) || (occupant_refs > 1 && refs == 0);
            if !replace {
                return false;
            }
            self.drop_new_ref(other, bucket as u16);
        }
        match self.entries.get_mut(&addr) {
            Some(entry) => {
                if let Place::New(buckets) = &mut entry.place {
                    buckets.push(bucket as u16);
                }
            }
            None => {
                let index = self.new_ids.len();
                self.new_ids.push(addr);
                self.entries.insert(
                    addr,
                    Entry {
                        source,
                        last_seen: time,
                        last_success: 0,
                        last_try: 0,
                        attempts: 0,
                        place: Place::New(vec![bucket as u16]),
                        index,
                        next_attempt: None,
                    },
                );
            }
        }
        self.new_slots[slot] = Some(addr);
        true
    }

    /// Records a completed handshake with `addr`, which we dialed: it moves
    /// to the tried table, unless its slot there holds another address:
    /// then it stays in new and the collision waits for a test of the
    /// holder (`resolve_collisions`). Returns whether it moved to tried.
    pub fn mark_good(&mut self, addr: SocketAddr, now: u32) -> bool {
        let addr = canonical_socket(addr);
        if !self.acceptable(&addr) {
            return false;
        }
        let was_tried = self.entries.get(&addr).is_some_and(|e| e.is_tried());
        let holder = self.tried_slots[self.tried_slot(&addr)];
        self.work += 1;
        if !was_tried && holder.is_some_and(|h| h != addr) {
            if !self.entries.contains_key(&addr) {
                self.add_new(addr, addr.ip(), now, now);
            }
            if self.entries.contains_key(&addr) && self.collisions.len() < TRIED_COLLISIONS_MAX {
                self.collisions.entry(addr).or_insert(now);
            }
        } else {
            self.make_tried(addr, now, addr.ip());
        }
        self.record_success(addr, now);
        !was_tried && self.entries.get(&addr).is_some_and(|e| e.is_tried())
    }

    fn record_success(&mut self, addr: SocketAddr, now: u32) {
        if let Some(entry) = self.entries.get_mut(&addr) {
            entry.last_seen = now;
            entry.last_success = now;
            entry.last_try = now;
            entry.attempts = 0;
            entry.next_attempt = None;
        }
    }

    /// Settles the collisions whose test is over (Bitcoin Core's
    /// `ResolveCollisions`): the newcomer moves to tried if its slot is
    /// free, or if the holder has not connected in `TRIED_REPLACEMENT_WINDOW`
    /// and either failed a dial begun at least `TRIED_TEST_TIMEOUT` ago
    /// within the last `TRIED_TEST_WINDOW`, or was not dialed at all in the
    /// `TRIED_TEST_WINDOW` since the collision. A holder that connected
    /// lately keeps its slot. Returns whether an address moved to tried.
    pub fn resolve_collisions(&mut self, now: u32) -> bool {
        let pending: Vec<(SocketAddr, u32)> =
            self.collisions.iter().map(|(a, t)| (*a, *t)).collect();
        let mut moved = false;
        for (addr, found) in pending {
            self.work += 1;
            let settled = match self.entries.get(&addr) {
                None => true,
                Some(entry) if entry.is_tried() => true,
                Some(_) => {
                    let holder = self.tried_slots[self.tried_slot(&addr)];
                    let replace = match holder.map(|h| &self.entries[&h]) {
                        None => Some(true),
                        Some(h)
                            if h.last_success.saturating_add(TRIED_REPLACEMENT_WINDOW) > now =>
                        {
                            Some(false)
                        }
                        Some(h) if h.last_try.saturating_add(TRIED_TEST_WINDOW) > now => {
                            (h.last_try.saturating_add(TRIED_TEST_TIMEOUT) <= now).then_some(true)
                        }
                        Some(_) => (found.saturating_add(TRIED_TEST_WINDOW) <= now).then_some(true),
                    };
                    if replace == Some(true) {
                        self.make_tried(addr, now, addr.ip());
                        moved = true;
                    }
                    replace.is_some()
                }
            };
            if settled {
                self.collisions.remove(&addr);
            }
        }
        moved
    }

    /// The tried entries newcomers collide with, in random order: a feeler
    /// tests the first it may dial (Bitcoin Core's `SelectTriedCollision`).
    pub fn collision_holders(&mut self) -> Vec<SocketAddr> {
        let mut waiting: Vec<SocketAddr> = self.collisions.keys().copied().collect();
        waiting.shuffle(&mut self.rng);
        let mut holders = Vec::with_capacity(waiting.len());
        for addr in waiting {
            self.work += 1;
            if let Some(holder) = self.tried_slots[self.tried_slot(&addr)].filter(|h| *h != addr) {
                if !holders.contains(&holder) {
                    holders.push(holder);
                }
            }
        }
        holders
    }

    /// Addresses waiting for a test of their tried slot's holder.
    pub fn collision_count(&self) -> usize {
        self.collisions.len()
    }

    /// Whether `addr` is in the tried table.
    pub fn is_tried(&self, addr: &SocketAddr) -> bool {
        self.entries
            .get(&canonical_socket(*addr))
            .is_some_and(|e| e.is_tried())
    }

    /// The tried slot `addr` takes (or would take): two addresses with the
    /// same one collide.
    pub(crate) fn tried_slot(&self, addr: &SocketAddr) -> usize {
        self.slot(true, self.tried_bucket(addr), addr)
    }

    fn make_tried(&mut self, addr: SocketAddr, seen: u32, source: IpAddr) {
        let (source, last_seen, last_success, last_try, attempts) = match self.entries.get(&addr) {
            Some(entry) if entry.is_tried() => return,
            Some(entry) => {
                let Place::New(buckets) = entry.place.clone() else {
                    return;
                };
                let kept = (
                    entry.source,
                    entry.last_seen,
                    entry.last_success,
                    entry.last_try,
                    entry.attempts,
                );
                for bucket in buckets {
                    let slot = self.slot(false, usize::from(bucket), &addr);
                    self.work += 1;
                    if self.new_slots[slot] == Some(addr) {
                        self.new_slots[slot] = None;
                    }
                }
                let index = self.entries[&addr].index;
                self.entries.remove(&addr);
                self.unlist(false, index);
                kept
            }
            None => (source, seen, 0, 0, 0),
        };
        let bucket = self.tried_bucket(&addr);
        let slot = self.slot(true, bucket, &addr);
        self.work += 1;
        if let Some(old) = self.tried_slots[slot] {
            self.demote(old);
        }
        let index = self.tried_ids.len();
        self.tried_ids.push(addr);
        self.tried_slots[slot] = Some(addr);
        self.entries.insert(
            addr,
            Entry {
                source,
                last_seen,
                last_success,
                last_try,
                attempts,
                place: Place::Tried(bucket as u16),
                index,
                next_attempt: None,
            },
        );
    }

    /// Moves a tried entry back to the new table, into the slot its source
    /// gives it (whatever was there is dropped), to make room in tried.
    fn demote(&mut self, addr: SocketAddr) {
        let Some(entry) = self.entries.get(&addr) else {
            return;
        };
        let Place::Tried(bucket) = entry.place else {
            return;
        };
        let (index, source) = (entry.index, entry.source);
        let tried_slot = self.slot(true, usize::from(bucket), &addr);
        self.tried_slots[tried_slot] = None;
        self.unlist(true, index);
        let new_bucket = self.new_bucket(&addr, NetGroup::of(source));
        let new_slot = self.slot(false, new_bucket, &addr);
        self.work += 1;
        if let Some(other) = self.new_slots[new_slot] {
            self.drop_new_ref(other, new_bucket as u16);
        }
        let index = self.new_ids.len();
        self.new_ids.push(addr);
        self.new_slots[new_slot] = Some(addr);
        let entry = self.entries.get_mut(&addr).expect("checked above");
        entry.place = Place::New(vec![new_bucket as u16]);
        entry.index = index;
    }

    /// Records that we are dialing `addr` now.
    pub fn mark_attempt(&mut self, addr: SocketAddr, now: u32) {
        if let Some(entry) = self.entries.get_mut(&canonical_socket(addr)) {
            entry.last_try = now;
        }
    }

    /// Records a failed or lost connection: back off exponentially (never
    /// shortening a longer wait already set).
    pub fn mark_failed(&mut self, addr: SocketAddr, now: Instant) {
        if let Some(entry) = self.entries.get_mut(&canonical_socket(addr)) {
            entry.attempts = entry.attempts.saturating_add(1);
            let delay = MIN_RETRY_DELAY
                .saturating_mul(1 << entry.attempts.min(16))
                .min(MAX_RETRY_DELAY);
            let next = now + delay;
            entry.next_attempt = Some(entry.next_attempt.map_or(next, |t| t.max(next)));
        }
    }

    /// Picks an address to dial now, at random, from tried or new with even
    /// odds, favouring addresses not tried or failed lately, leaving out
    /// those `skip` says; `None` when `SELECT_PROBES` random entries gave
    /// nothing.
    pub fn select(
        &mut self,
        now: Instant,
        now_unix: u32,
        skip: impl Fn(&SocketAddr) -> bool,
    ) -> Option<SocketAddr> {
        self.select_from(false, now, now_unix, skip)
    }

    /// As `select`, from the new table alone: what a feeler tests.
    pub fn select_new(
        &mut self,
        now: Instant,
        now_unix: u32,
        skip: impl Fn(&SocketAddr) -> bool,
    ) -> Option<SocketAddr> {
        self.select_from(true, now, now_unix, skip)
    }

    fn select_from(
        &mut self,
        new_only: bool,
        now: Instant,
        now_unix: u32,
        skip: impl Fn(&SocketAddr) -> bool,
    ) -> Option<SocketAddr> {
        let mut factor = 1.0;
        for _ in 0..SELECT_PROBES {
            let tried = match (
                self.tried_ids.is_empty() || new_only,
                self.new_ids.is_empty(),
            ) {
                (true, true) => return None,
                (false, true) => true,
                (true, false) => false,
                (false, false) => self.rng.gen_bool(0.5),
            };
            let ids = if tried {
                &self.tried_ids
            } else {
                &self.new_ids
            };
            let addr = ids[self.rng.gen_range(0..ids.len())];
            self.work += 1;
            let entry = &self.entries[&addr];
            if entry.next_attempt.is_some_and(|t| t > now) || skip(&addr) {
                continue;
            }
            let chance = (entry.chance(now_unix) * factor).min(1.0);
            if self.rng.gen_bool(chance) {
                return Some(addr);
            }
            factor *= 1.2;
        }
        None
    }

    /// How many addresses `sample(max, ..)` looks for: at most `max` and at
    /// most `GETADDR_MAX_PERCENT` of the book.
    pub fn sample_size(&self, max: usize) -> usize {
        let total = self.new_ids.len() + self.tried_ids.len();
        max.min((total * GETADDR_MAX_PERCENT).div_ceil(100))
    }

    /// Addresses to share in an `addr` answer, with their last-seen time: a
    /// random sample of at most `max` and at most `GETADDR_MAX_PERCENT` of
    /// the book, leaving out worthless entries.
    pub fn sample(&mut self, max: usize, now: u32) -> Vec<(SocketAddr, u32)> {
        let total = self.new_ids.len() + self.tried_ids.len();
        let wanted = self.sample_size(max);
        let mut chosen = HashSet::with_capacity(wanted);
        let mut out = Vec::with_capacity(wanted);
        for _ in 0..wanted * GETADDR_PROBES_PER_ADDRESS {
            if out.len() == wanted {
                break;
            }
            let i = self.rng.gen_range(0..total);
            let addr = if i < self.new_ids.len() {
                self.new_ids[i]
            } else {
                self.tried_ids[i - self.new_ids.len()]
            };
            self.work += 1;
            let entry = &self.entries[&addr];
            if entry.is_terrible(now) || !chosen.insert(addr) {
                continue;
            }
            out.push((addr, entry.last_seen));
        }
        out
    }

    /// The new buckets in use, for tests of the bucketing.
    #[cfg(test)]
    fn new_buckets_used(&self) -> HashSet<usize> {
        self.new_slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| i / BUCKET_SIZE)
            .collect()
    }

    /// Checks every internal link (slots, lists, entries), for tests.
    #[cfg(test)]
    fn check_consistency(&self) {
        assert_eq!(
            self.entries.len(),
            self.new_ids.len() + self.tried_ids.len()
        );
        for (tried, ids) in [(false, &self.new_ids), (true, &self.tried_ids)] {
            for (i, addr) in ids.iter().enumerate() {
                let entry = &self.entries[addr];
                assert_eq!(entry.index, i);
                assert_eq!(entry.is_tried(), tried);
                match &entry.place {
                    Place::New(buckets) => {
                        assert!(!buckets.is_empty() && buckets.len() <= NEW_BUCKETS_PER_ADDRESS);
                        for b in buckets {
                            assert_eq!(
                                self.new_slots[self.slot(false, usize::from(*b), addr)],
                                Some(*addr)
                            );
                        }
                    }
                    Place::Tried(b) => assert_eq!(
                        self.tried_slots[self.slot(true, usize::from(*b), addr)],
                        Some(*addr)
                    ),
                }
            }
        }
        let new_refs: usize = self
            .entries
            .values()
            .map(|e| match &e.place {
                Place::New(b) => b.len(),
                Place::Tried(_) => 0,
            })
            .sum();
        assert_eq!(new_refs, self.new_slots.iter().flatten().count());
        assert_eq!(
            self.tried_ids.len(),
            self.tried_slots.iter().flatten().count()
        );
    }
}

#[cfg(test)]
mod tests;
