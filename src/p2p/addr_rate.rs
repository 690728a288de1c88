//! A per-peer token bucket for the addresses of `addr` messages, after
//! Bitcoin Core: a peer earns `ADDR_RATE_PER_SEC` addresses a second up to
//! `ADDR_BURST`, and one full answer each time we ask it with `getaddr`.
//! Addresses beyond its tokens are dropped unread and counted, so an
//! unsolicited flood costs the book nothing.

use std::time::Instant;

use crate::wire::constants::MAX_ADDR_ENTRIES;

/// Addresses a peer may send per second on average: Core's 0.1, one every
/// ten seconds, plenty for announcements of nodes that come and go.
pub const ADDR_RATE_PER_SEC: f64 = 0.1;
/// Most tokens a peer can hold: one full `addr` message.
pub const ADDR_BURST: f64 = MAX_ADDR_ENTRIES as f64;
/// Tokens a new connection starts with: one, for the peer's own address.
pub const ADDR_INITIAL_TOKENS: f64 = 1.0;

/// The addresses one peer may still send.
#[derive(Debug, Clone)]
pub struct AddrRateLimit {
    tokens: f64,
    updated: Instant,
}

impl AddrRateLimit {
    pub fn new(now: Instant) -> AddrRateLimit {
        AddrRateLimit {
            tokens: ADDR_INITIAL_TOKENS,
            updated: now,
        }
    }

    /// We sent the peer `getaddr`: its answer, one full message, is welcome.
    pub fn expect_answer(&mut self) {
        self.tokens = (self.tokens + MAX_ADDR_ENTRIES as f64).min(ADDR_BURST);
    }

    /// How many of `count` addresses arriving now are processed; the rest
    /// are to be dropped.
    pub fn admit(&mut self, count: usize, now: Instant) -> usize {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = self.updated.max(now);
        self.tokens = (self.tokens + elapsed * ADDR_RATE_PER_SEC).min(ADDR_BURST);
        let admitted = (self.tokens.floor() as usize).min(count);
        self.tokens -= admitted as f64;
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_answer_is_welcome_once_and_the_rest_trickles_in() {
        let now = Instant::now();
        let mut limit = AddrRateLimit::new(now);
        limit.expect_answer();
        assert_eq!(limit.admit(MAX_ADDR_ENTRIES, now), MAX_ADDR_ENTRIES);
        assert_eq!(limit.admit(MAX_ADDR_ENTRIES, now), 0);
        // Ten seconds earn one address; a day earns no more than the burst.
        assert_eq!(limit.admit(5, now + Duration::from_secs(10)), 1);
        let day = now + Duration::from_secs(86_400);
        assert_eq!(limit.admit(5000, day), MAX_ADDR_ENTRIES);
    }

    #[test]
    fn an_unsolicited_flood_gets_one_address_through() {
        let now = Instant::now();
        let mut limit = AddrRateLimit::new(now);
        assert_eq!(limit.admit(MAX_ADDR_ENTRIES, now), 1);
        assert_eq!(limit.admit(MAX_ADDR_ENTRIES, now), 0);
    }
}
