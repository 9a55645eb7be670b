//! Address and port intervals: what nftables interval sets hold.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::objects::Protocol;

/// An inclusive range of IPv4 addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl AddrRange {
    pub fn of(net: Ipv4Net) -> AddrRange {
        AddrRange {
            first: net.network(),
            last: net.broadcast(),
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.first <= ip && ip <= self.last
    }
}

/// `cidr` without the `except` blocks, as disjoint sorted ranges.
pub fn cidr_except(cidr: Ipv4Net, except: &[Ipv4Net]) -> Vec<AddrRange> {
    let mut out = vec![(u32::from(cidr.network()), u32::from(cidr.broadcast()))];
    for e in except {
        let (ef, el) = (u32::from(e.network()), u32::from(e.broadcast()));
        let mut next = Vec::with_capacity(out.len() + 1);
        for (f, l) in out {
            if el < f || ef > l {
                next.push((f, l));
                continue;
            }
            if ef > f {
                next.push((f, ef - 1));
            }
            if el < l {
                next.push((el + 1, l));
            }
        }
        out = next;
    }
    out.into_iter()
        .map(|(f, l)| AddrRange {
            first: f.into(),
            last: l.into(),
        })
        .collect()
}

/// Sorts and merges overlapping or adjacent ranges (nftables interval sets want them disjoint).
pub fn merge_addrs(mut ranges: Vec<AddrRange>) -> Vec<AddrRange> {
    ranges.sort();
    let mut out: Vec<AddrRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(prev) if u64::from(u32::from(r.first)) <= u64::from(u32::from(prev.last)) + 1 => {
                prev.last = prev.last.max(r.last);
            }
            _ => out.push(r),
        }
    }
    out
}

/// Whether sorted disjoint `ranges` contain `ip` (a binary search, as the kernel's interval
/// set lookup).
pub fn addrs_contain(ranges: &[AddrRange], ip: Ipv4Addr) -> bool {
    let i = ranges.partition_point(|r| r.last < ip);
    ranges.get(i).is_some_and(|r| r.contains(ip))
}

/// An inclusive range of ports of one protocol: an element of an `inet_proto . inet_service`
/// interval set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub protocol: Protocol,
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, protocol: Protocol, port: u16) -> bool {
        self.protocol == protocol && self.first <= port && port <= self.last
    }
}

/// Sorts and merges overlapping or adjacent ranges of the same protocol.
pub fn merge_ports(mut ranges: Vec<PortRange>) -> Vec<PortRange> {
    ranges.sort();
    let mut out: Vec<PortRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(prev)
                if prev.protocol == r.protocol
                    && u32::from(r.first) <= u32::from(prev.last) + 1 =>
            {
                prev.last = prev.last.max(r.last);
            }
            _ => out.push(r),
        }
    }
    out
}

/// Whether sorted disjoint `ranges` contain (protocol, port).
pub fn ports_contain(ranges: &[PortRange], protocol: Protocol, port: u16) -> bool {
    let i = ranges.partition_point(|r| (r.protocol, r.last) < (protocol, port));
    ranges.get(i).is_some_and(|r| r.contains(protocol, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test CIDR")
    }

    fn r(a: &str, b: &str) -> AddrRange {
        AddrRange {
            first: a.parse().expect("ip"),
            last: b.parse().expect("ip"),
        }
    }

    #[test]
    fn excepts_cut_holes() {
        assert_eq!(
            cidr_except(
                net("10.0.0.0/24"),
                &[net("10.0.0.16/28"), net("10.0.0.255/32")]
            ),
            vec![r("10.0.0.0", "10.0.0.15"), r("10.0.0.32", "10.0.0.254")]
        );
        assert_eq!(
            cidr_except(net("10.0.0.0/24"), &[net("10.0.0.0/24")]),
            vec![]
        );
        assert_eq!(
            cidr_except(net("0.0.0.0/0"), &[net("10.0.0.0/8")]),
            vec![
                r("0.0.0.0", "9.255.255.255"),
                r("11.0.0.0", "255.255.255.255")
            ]
        );
    }

    #[test]
    fn merging_and_lookup() {
        let m = merge_addrs(vec![
            r("10.0.0.5", "10.0.0.9"),
            r("10.0.0.0", "10.0.0.4"),
            r("10.0.1.0", "10.0.1.0"),
            r("10.0.0.7", "10.0.0.8"),
            r("255.255.255.255", "255.255.255.255"),
        ]);
        assert_eq!(
            m,
            vec![
                r("10.0.0.0", "10.0.0.9"),
                r("10.0.1.0", "10.0.1.0"),
                r("255.255.255.255", "255.255.255.255")
            ]
        );
        assert!(addrs_contain(&m, "10.0.0.9".parse().expect("ip")));
        assert!(!addrs_contain(&m, "10.0.0.10".parse().expect("ip")));
        assert!(addrs_contain(&m, "255.255.255.255".parse().expect("ip")));
        let p = merge_ports(vec![
            PortRange {
                protocol: Protocol::Udp,
                first: 53,
                last: 53,
            },
            PortRange {
                protocol: Protocol::Tcp,
                first: 81,
                last: 90,
            },
            PortRange {
                protocol: Protocol::Tcp,
                first: 80,
                last: 80,
            },
        ]);
        assert_eq!(p.len(), 2);
        assert!(ports_contain(&p, Protocol::Tcp, 85));
        assert!(!ports_contain(&p, Protocol::Udp, 85));
        assert!(ports_contain(&p, Protocol::Udp, 53));
        assert!(!ports_contain(&p, Protocol::Sctp, 53));
    }
}
