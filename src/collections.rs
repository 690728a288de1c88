//! Hash maps and sets keyed by hashes a peer, a miner or a REST client
//! chose (txids, outpoints, owners): the block path's, and lookups per
//! request.
//!
//! The hasher is foldhash's, seeded at random per process and per map:
//! std's SipHash was the largest single cost of the maps a catch-up fills
//! and probes for every transaction (the write-back cache's rows, a
//! block's delta, its spends). foldhash calls itself minimally
//! DoS-resistant, weaker than SipHash against an attacker who can observe
//! hashes or map order (nothing here shows either to a peer): the random
//! seed keeps a miner who grinds txids from aiming rows computed offline at
//! one bucket. Iteration order is random, as it was with SipHash's random
//! keys: nothing that reaches the ledger may depend on it.

/// A `HashMap` with randomly seeded foldhash (see above).
pub type FastHashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A `HashSet` with randomly seeded foldhash (see above).
pub type FastHashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
