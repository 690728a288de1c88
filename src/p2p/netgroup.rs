//! Network groups and routability of peer addresses.
//!
//! A network group is the part of an address that one operator can hardly
//! vary: an IPv4 /16, an IPv6 /32. The address book buckets addresses by
//! group, outbound connections go to distinct groups and inbound eviction
//! targets the group with the most connections, so that one operator with
//! many addresses in one range counts as one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::consensus::params::Network;

/// The network group of an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NetGroup {
    /// A routable IPv4 address: its /16.
    Ipv4([u8; 2]),
    /// A routable IPv6 address: its /32.
    Ipv6([u8; 4]),
    /// Loopback (127.0.0.0/8, ::1): all one group.
    Loopback,
    /// A private or link-local range: each range is one group.
    Private(PrivateRange),
    /// Anything else that is not routable (documentation, reserved,
    /// unspecified, multicast): all one group.
    Unroutable,
}

/// The private and link-local ranges, each its own network group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrivateRange {
    /// 10.0.0.0/8 (RFC 1918).
    Ten,
    /// 172.16.0.0/12 (RFC 1918).
    OneSevenTwo,
    /// 192.168.0.0/16 (RFC 1918).
    OneNineTwo,
    /// 100.64.0.0/10, carrier-grade NAT (RFC 6598).
    SharedCgnat,
    /// 169.254.0.0/16, IPv4 link-local (RFC 3927).
    LinkLocalV4,
    /// fc00::/7, IPv6 unique local (RFC 4193).
    UniqueLocalV6,
    /// fe80::/10, IPv6 link-local (RFC 4862).
    LinkLocalV6,
}

impl NetGroup {
    /// The group of `ip` (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn of(ip: IpAddr) -> NetGroup {
        match canonical(ip) {
            IpAddr::V4(v4) => group_v4(v4),
            IpAddr::V6(v6) => group_v6(v6),
        }
    }

    /// Whether addresses of this group can be reached across the internet.
    pub fn is_routable(self) -> bool {
        matches!(self, NetGroup::Ipv4(_) | NetGroup::Ipv6(_))
    }

    /// A fixed byte form, for keyed hashing: a tag, then the prefix.
    pub fn to_bytes(self) -> [u8; 5] {
        match self {
            NetGroup::Ipv4([a, b]) => [4, a, b, 0, 0],
            NetGroup::Ipv6([a, b, c, d]) => [6, a, b, c, d],
            NetGroup::Loopback => [1, 0, 0, 0, 0],
            NetGroup::Private(range) => [2, range as u8, 0, 0, 0],
            NetGroup::Unroutable => [0, 0, 0, 0, 0],
        }
    }
}

/// An IPv4-mapped IPv6 address as IPv4; anything else unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn group_v4(ip: Ipv4Addr) -> NetGroup {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        return NetGroup::Loopback;
    }
    let private = match (a, b) {
        (10, _) => Some(PrivateRange::Ten),
        (172, 16..=31) => Some(PrivateRange::OneSevenTwo),
        (192, 168) => Some(PrivateRange::OneNineTwo),
        (100, 64..=127) => Some(PrivateRange::SharedCgnat),
        (169, 254) => Some(PrivateRange::LinkLocalV4),
        _ => None,
    };
    if let Some(range) = private {
        return NetGroup::Private(range);
    }
    let unroutable = a == 0 // "this network" (RFC 1122)
        || a >= 224 // multicast, reserved (240/4) and broadcast
        || (a, b) == (198, 18) || (a, b) == (198, 19) // benchmarking (RFC 2544)
        || (a, b, c) == (192, 0, 2) // documentation (RFC 5737)
        || (a, b, c) == (198, 51, 100)
        || (a, b, c) == (203, 0, 113)
        || (a, b, c) == (192, 0, 0); // protocol assignments (RFC 6890)
    if unroutable {
        NetGroup::Unroutable
    } else {
        NetGroup::Ipv4([a, b])
    }
}

fn group_v6(ip: Ipv6Addr) -> NetGroup {
    if ip.is_loopback() {
        return NetGroup::Loopback;
    }
    let s = ip.segments();
    if s[0] & 0xfe00 == 0xfc00 {
        return NetGroup::Private(PrivateRange::UniqueLocalV6);
    }
    if s[0] & 0xffc0 == 0xfe80 {
        return NetGroup::Private(PrivateRange::LinkLocalV6);
    }
    let unroutable = ip.is_unspecified()
        || ip.is_multicast()
        || (s[0], s[1]) == (0x2001, 0x0db8) // documentation (RFC 3849)
        || (s[0] == 0x2001 && s[1] & 0xfff0 == 0x0010) // ORCHID (RFC 4843)
        || (s[0] == 0x2001 && s[1] & 0xfff0 == 0x0020) // ORCHIDv2 (RFC 7343)
        || s[0] == 0 // IPv4-compatible and other reserved (::/16)
        || s[0] & 0xe000 != 0x2000; // outside global unicast 2000::/3
    if unroutable {
        return NetGroup::Unroutable;
    }
    let [a, b, c, d, ..] = ip.octets();
    NetGroup::Ipv6([a, b, c, d])
}

/// Whether the address book keeps and dials `ip` on `network`: on main and
/// test only routable addresses (a loopback or private address learned from
/// a stranger is useless at best and a way to make us probe a local service
/// at worst); regtest, made for local test networks, also keeps loopback
/// and private ranges.
pub fn is_acceptable(ip: IpAddr, network: Network) -> bool {
    match NetGroup::of(ip) {
        group if group.is_routable() => true,
        NetGroup::Loopback | NetGroup::Private(_) => network == Network::Regtest,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(s: &str) -> NetGroup {
        NetGroup::of(s.parse().unwrap())
    }

    #[test]
    fn ipv4_groups_are_slash_16_and_ipv6_groups_slash_32() {
        assert_eq!(group("8.8.4.4"), group("8.8.200.1"));
        assert_ne!(group("8.8.4.4"), group("8.9.4.4"));
        assert_eq!(group("::ffff:8.8.1.1"), group("8.8.9.9"));
        assert_eq!(group("2a01:4f8:1:2::1"), group("2a01:4f8:ffff::9"));
        assert_ne!(group("2a01:4f8::1"), group("2a01:4f9::1"));
        assert_eq!(group("127.0.0.1"), NetGroup::Loopback);
        assert_eq!(group("::1"), NetGroup::Loopback);
        assert_eq!(group("10.1.2.3"), group("10.200.0.1"));
        assert_ne!(group("10.1.2.3"), group("192.168.1.1"));
    }

    #[test]
    fn non_routable_addresses_are_refused_on_main_and_test_only() {
        let refused_everywhere = [
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.9",
            "198.18.0.1",
            "::",
            "2001:db8::1",
            "ff02::1",
        ];
        let local = [
            "127.0.0.1",
            "::1",
            "10.0.0.1",
            "172.16.5.5",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.1.1",
            "fd00::1",
            "fe80::1",
        ];
        for network in [Network::Main, Network::Test, Network::Regtest] {
            for ip in refused_everywhere {
                assert!(!is_acceptable(ip.parse().unwrap(), network), "{ip}");
            }
            for ip in local {
                assert_eq!(
                    is_acceptable(ip.parse().unwrap(), network),
                    network == Network::Regtest,
                    "{ip} on {network:?}"
                );
            }
            for ip in ["8.8.8.8", "2a01:4f8::1", "::ffff:1.2.3.4"] {
                assert!(is_acceptable(ip.parse().unwrap(), network), "{ip}");
            }
        }
    }
}
