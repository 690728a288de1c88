//! Which inbound peer makes room for a newcomer when every inbound slot is
//! taken, after Bitcoin Core's `SelectNodeToEvict`: peers that are hard to
//! imitate are protected (a few network groups chosen by a secret key, the
//! fastest, those that last brought us new transactions or blocks, then the
//! longest connected half), and among the rest the youngest peer of the
//! network group with the most connections goes. An attacker holding many
//! slots from few groups loses its own slots first, and honest peers that
//! do useful work keep theirs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::netgroup::NetGroup;
use super::protocol::PeerId;

/// Peers protected for their keyed network group: an attacker cannot know
/// which groups these are (Core: 4).
pub const PROTECT_BY_KEYED_GROUP: usize = 4;
/// Peers protected for the lowest round-trip time, which an attacker cannot
/// fake without moving closer (Core: 8).
pub const PROTECT_BY_PING: usize = 8;
/// Peers protected for the latest new transaction they brought: useful
/// work (Core: 4).
pub const PROTECT_BY_TX: usize = 4;
/// Peers protected for the latest new block they brought (Core: 4).
pub const PROTECT_BY_BLOCK: usize = 4;
/// Of the peers left, this share (numerator, denominator) is protected for
/// having been connected longest (Core: half).
pub const PROTECT_BY_UPTIME: (usize, usize) = (1, 2);

/// What eviction knows of one inbound peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvictionCandidate {
    pub id: PeerId,
    pub connected_at: Instant,
    /// Lowest ping round trip measured (`None`: none yet).
    pub min_ping: Option<Duration>,
    /// When the peer last sent a block new to us.
    pub last_block_at: Option<Instant>,
    /// When the peer last sent a transaction our pool accepted.
    pub last_tx_at: Option<Instant>,
    pub group: NetGroup,
    /// `group` hashed with this node's secret key.
    pub keyed_group: u64,
}

/// Removes from `candidates` up to `count` best by `better_first` among
/// those `eligible` says: they are protected.
fn protect<K: Ord>(
    candidates: &mut Vec<EvictionCandidate>,
    count: usize,
    eligible: impl Fn(&EvictionCandidate) -> bool,
    better_first: impl Fn(&EvictionCandidate) -> K,
) {
    candidates.sort_by_key(|c| (!eligible(c), better_first(c), c.id));
    let protected = candidates
        .iter()
        .take(count)
        .filter(|c| eligible(c))
        .count();
    candidates.drain(..protected);
}

/// The inbound peer to disconnect so that a newcomer can have its slot, or
/// `None` if every candidate is protected (the newcomer is then refused).
pub fn select_peer_to_evict(mut candidates: Vec<EvictionCandidate>) -> Option<PeerId> {
    protect(
        &mut candidates,
        PROTECT_BY_KEYED_GROUP,
        |_| true,
        |c| std::cmp::Reverse(c.keyed_group),
    );
    protect(
        &mut candidates,
        PROTECT_BY_PING,
        |c| c.min_ping.is_some(),
        |c| c.min_ping,
    );
    protect(
        &mut candidates,
        PROTECT_BY_TX,
        |c| c.last_tx_at.is_some(),
        |c| std::cmp::Reverse(c.last_tx_at),
    );
    protect(
        &mut candidates,
        PROTECT_BY_BLOCK,
        |c| c.last_block_at.is_some(),
        |c| std::cmp::Reverse(c.last_block_at),
    );
    let (numerator, denominator) = PROTECT_BY_UPTIME;
    let by_uptime = candidates.len() * numerator / denominator;
    protect(&mut candidates, by_uptime, |_| true, |c| c.connected_at);
    // The group with the most connections; of equal ones, the group with
    // the youngest member. Its youngest member goes.
    let mut groups: HashMap<NetGroup, (usize, Instant, PeerId)> = HashMap::new();
    for c in &candidates {
        let group = groups.entry(c.group).or_insert((0, c.connected_at, c.id));
        group.0 += 1;
        if (c.connected_at, c.id) > (group.1, group.2) {
            (group.1, group.2) = (c.connected_at, c.id);
        }
    }
    groups
        .into_values()
        .max_by_key(|(count, youngest, id)| (*count, *youngest, *id))
        .map(|(_, _, id)| id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn candidate(id: PeerId, ip: &str, connected_at: Instant) -> EvictionCandidate {
        let group = NetGroup::of(ip.parse::<IpAddr>().unwrap());
        EvictionCandidate {
            id,
            connected_at,
            min_ping: None,
            last_block_at: None,
            last_tx_at: None,
            group,
            // A stand-in for the keyed hash: any fixed value per group.
            keyed_group: u64::from(group.to_bytes()[1]),
        }
    }

    /// 117 inbound: an attacker's 110 from one /16, connected first, and 7
    /// honest peers from other groups, each with something that protects it.
    fn squatted(start: Instant) -> (Vec<EvictionCandidate>, Vec<PeerId>) {
        let mut all = Vec::new();
        for i in 0..110u64 {
            let ip = format!("45.33.{}.{}", i / 200, i % 200 + 1);
            all.push(candidate(i, &ip, start + Duration::from_secs(i)));
        }
        let later = start + Duration::from_secs(1000);
        let mut honest = Vec::new();
        for (n, ip) in [
            "8.8.8.8",
            "1.1.1.1",
            "9.9.9.9",
            "80.67.169.12",
            "185.12.64.1",
            "94.140.14.14",
            "77.88.8.8",
        ]
        .into_iter()
        .enumerate()
        {
            let id = 1000 + n as u64;
            let mut c = candidate(id, ip, later + Duration::from_secs(n as u64));
            match n {
                0 | 1 => c.min_ping = Some(Duration::from_millis(5 + n as u64)),
                2 | 3 => c.last_block_at = Some(later),
                4 | 5 => c.last_tx_at = Some(later),
                _ => {}
            }
            honest.push(id);
            all.push(c);
        }
        (all, honest)
    }

    #[test]
    fn the_attackers_group_loses_a_slot_and_honest_peers_keep_theirs() {
        let start = Instant::now();
        let (candidates, honest) = squatted(start);
        assert_eq!(candidates.len(), 117);
        let evicted = select_peer_to_evict(candidates.clone()).expect("someone is evicted");
        assert!(!honest.contains(&evicted), "evicted honest peer {evicted}");
        // The youngest of the attacker's group.
        assert_eq!(evicted, 109);
        // Pings measured on the attacker's peers do not save the group: the
        // 8 fastest are protected, and the rest still outnumber everyone.
        let mut pinged = candidates;
        for c in pinged.iter_mut().filter(|c| c.id < 110) {
            c.min_ping = Some(Duration::from_millis(1));
        }
        let evicted = select_peer_to_evict(pinged).unwrap();
        assert!(evicted < 110, "evicted {evicted}");
    }

    #[test]
    fn protected_peers_are_never_evicted() {
        let start = Instant::now();
        // Four peers in four groups: the keyed-group rule protects them all.
        let few: Vec<EvictionCandidate> = ["8.8.8.8", "1.1.1.1", "9.9.9.9", "77.88.8.8"]
            .iter()
            .enumerate()
            .map(|(i, ip)| candidate(i as u64, ip, start))
            .collect();
        assert_eq!(select_peer_to_evict(few), None);
        // Evicting again and again empties the attacker's group, never
        // the honest peers that are fast or bring blocks and transactions.
        let (mut candidates, honest) = squatted(start);
        for _ in 0..100 {
            let evicted = select_peer_to_evict(candidates.clone()).unwrap();
            assert!(!honest.contains(&evicted), "evicted honest peer {evicted}");
            candidates.retain(|c| c.id != evicted);
        }
    }
}
