//! The address book: addresses we heard of (`new`) and addresses we
//! connected to successfully (`tried`), bounded, with per-address backoff,
//! saved as JSON in the data dir so a restarted node finds its peers again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Most addresses kept that we only heard of.
pub const MAX_NEW_ADDRESSES: usize = 4096;
/// Most addresses kept that we connected to.
pub const MAX_TRIED_ADDRESSES: usize = 1024;
/// First wait after a failed attempt; doubles with every failure.
pub const MIN_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Longest wait between attempts to one address.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(120);
/// Name of the address book file in the data dir.
pub const ADDRBOOK_FILE: &str = "peers.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    tried: bool,
    /// Unix seconds of the last successful handshake or announcement.
    last_seen: u32,
    #[serde(skip)]
    failures: u32,
    #[serde(skip)]
    next_attempt: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct AddrBook {
    entries: HashMap<SocketAddr, Entry>,
    path: Option<PathBuf>,
}

impl AddrBook {
    /// Loads the book from `data_dir` (an unreadable file starts an empty
    /// book, with a warning: addresses are a cache, not state).
    pub fn load(data_dir: &Path) -> AddrBook {
        let path = data_dir.join(ADDRBOOK_FILE);
        let entries = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<HashMap<SocketAddr, Entry>>(&bytes)
                .unwrap_or_else(|e| {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable address book");
                    HashMap::new()
                }),
            Err(_) => HashMap::new(),
        };
        AddrBook {
            entries,
            path: Some(path),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the book atomically (temp file, then rename).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.entries)?)?;
        std::fs::rename(tmp, path)
    }

    /// Records an address heard of from a peer.
    pub fn add_new(&mut self, addr: SocketAddr, last_seen: u32) {
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return;
        }
        if !self.entries.contains_key(&addr) {
            let new_count = self.entries.values().filter(|e| !e.tried).count();
            if new_count >= MAX_NEW_ADDRESSES {
                self.evict(false);
            }
        }
        self.entries
            .entry(addr)
            .and_modify(|e| e.last_seen = e.last_seen.max(last_seen))
            .or_insert(Entry {
                tried: false,
                last_seen,
                failures: 0,
                next_attempt: None,
            });
    }

    /// Records a completed handshake with `addr`.
    pub fn mark_good(&mut self, addr: SocketAddr, now_unix: u32) {
        if !self.entries.get(&addr).is_some_and(|e| e.tried) {
            let tried_count = self.entries.values().filter(|e| e.tried).count();
            if tried_count >= MAX_TRIED_ADDRESSES {
                self.evict(true);
            }
        }
        let entry = self.entries.entry(addr).or_insert(Entry {
            tried: true,
            last_seen: now_unix,
            failures: 0,
            next_attempt: None,
        });
        entry.tried = true;
        entry.last_seen = now_unix;
        entry.failures = 0;
        entry.next_attempt = None;
    }

    /// Records a failed connection attempt: back off exponentially.
    pub fn mark_failed(&mut self, addr: SocketAddr, now: Instant) {
        if let Some(entry) = self.entries.get_mut(&addr) {
            entry.failures = entry.failures.saturating_add(1);
            let delay = MIN_RETRY_DELAY
                .saturating_mul(1 << entry.failures.min(16))
                .min(MAX_RETRY_DELAY);
            entry.next_attempt = Some(now + delay);
        }
    }

    /// Drops the oldest address of one table.
    fn evict(&mut self, tried: bool) {
        if let Some(oldest) = self
            .entries
            .iter()
            .filter(|(_, e)| e.tried == tried)
            .min_by_key(|(_, e)| e.last_seen)
            .map(|(a, _)| *a)
        {
            self.entries.remove(&oldest);
        }
    }

    /// Addresses worth dialing now, tried ones first, most recently seen
    /// first, leaving out those `skip` says.
    pub fn candidates(&self, now: Instant, skip: impl Fn(&SocketAddr) -> bool) -> Vec<SocketAddr> {
        let mut found: Vec<(&SocketAddr, &Entry)> = self
            .entries
            .iter()
            .filter(|(a, e)| e.next_attempt.is_none_or(|t| t <= now) && !skip(a))
            .collect();
        found.sort_by_key(|(_, e)| (!e.tried, std::cmp::Reverse(e.last_seen)));
        found.into_iter().map(|(a, _)| *a).collect()
    }

    /// Up to `max` addresses to share in `addr`, with their last-seen time.
    pub fn sample(&self, max: usize) -> Vec<(SocketAddr, u32)> {
        let mut all: Vec<(SocketAddr, u32)> = self
            .entries
            .iter()
            .map(|(a, e)| (*a, e.last_seen))
            .collect();
        all.sort_by_key(|(_, seen)| std::cmp::Reverse(*seen));
        all.truncate(max);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_and_prefers_tried_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = AddrBook::load(dir.path());
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2000".parse().unwrap();
        book.add_new(a, 10);
        book.add_new(b, 20);
        book.mark_good(a, 30);
        book.add_new("0.0.0.0:5".parse().unwrap(), 1);
        book.save().unwrap();
        let loaded = AddrBook::load(dir.path());
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded.candidates(Instant::now(), |_| false), vec![a, b]);
    }

    #[test]
    fn failures_back_off_and_tables_are_bounded() {
        let mut book = AddrBook::default();
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        book.add_new(a, 1);
        let now = Instant::now();
        book.mark_failed(a, now);
        assert!(book.candidates(now, |_| false).is_empty());
        assert_eq!(book.candidates(now + MAX_RETRY_DELAY, |_| false), vec![a]);
        for port in 1..=(MAX_NEW_ADDRESSES as u16 + 10) {
            book.add_new(SocketAddr::from(([10, 0, 0, 1], port)), u32::from(port));
        }
        assert_eq!(book.len(), MAX_NEW_ADDRESSES);
    }
}
