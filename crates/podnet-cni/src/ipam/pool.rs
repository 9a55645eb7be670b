//! The allocation table of one network on one node, and the rules for handing out
//! addresses. Pure: [`super::Store`] loads and saves it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::spec::Attachment;

/// Every address of a network that is in use, and where the round-robin cursor stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    /// The address handed out last; the next search starts after it, so a just-freed
    /// address is not reused at once (stale ARP and conntrack entries would misdirect
    /// traffic to the new pod).
    #[serde(default)]
    pub last_reserved: Option<Ipv4Addr>,
    #[serde(default)]
    pub allocations: BTreeMap<Ipv4Addr, Attachment>,
}

/// The subnet has no free address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    pub subnet: Ipv4Net,
    pub in_use: usize,
}

impl Pool {
    /// The address of `attachment`, if it has one.
    pub fn find(&self, attachment: &Attachment) -> Option<Ipv4Addr> {
        self.allocations
            .iter()
            .find(|(_, a)| *a == attachment)
            .map(|(ip, _)| *ip)
    }

    /// Gives `attachment` an address in `subnet` (never `gateway`, the network or the
    /// broadcast address). An attachment that already has one keeps it: a retried ADD
    /// after a crash gets the same address, never a second one.
    pub fn allocate(
        &mut self,
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
        attachment: &Attachment,
    ) -> Result<Ipv4Addr, Exhausted> {
        if let Some(ip) = self.find(attachment) {
            return Ok(ip);
        }
        let first = u32::from(subnet.network()) + 1;
        let last = u32::from(subnet.broadcast()) - 1;
        let size = last - first + 1;
        let start = match self.last_reserved.map(u32::from) {
            Some(l) if (first..=last).contains(&l) => l - first + 1,
            _ => 0,
        };
        for i in 0..size {
            let ip = Ipv4Addr::from(first + (start + i) % size);
            if ip == gateway || self.allocations.contains_key(&ip) {
                continue;
            }
            self.allocations.insert(ip, attachment.clone());
            self.last_reserved = Some(ip);
            return Ok(ip);
        }
        Err(Exhausted {
            subnet,
            in_use: self.in_use(subnet),
        })
    }

    /// Frees the address of `attachment`; returns it, or `None` if it had none.
    pub fn release(&mut self, attachment: &Attachment) -> Option<Ipv4Addr> {
        let ip = self.find(attachment)?;
        self.allocations.remove(&ip);
        Some(ip)
    }

    /// Frees every allocation whose attachment `keep` rejects; returns what was freed.
    pub fn release_unless(
        &mut self,
        keep: impl Fn(&Attachment) -> bool,
    ) -> Vec<(Ipv4Addr, Attachment)> {
        let gone: Vec<Ipv4Addr> = self
            .allocations
            .iter()
            .filter(|(_, a)| !keep(a))
            .map(|(ip, _)| *ip)
            .collect();
        gone.into_iter()
            .filter_map(|ip| self.allocations.remove(&ip).map(|a| (ip, a)))
            .collect()
    }

    /// How many pod addresses of `subnet` are taken.
    pub fn in_use(&self, subnet: Ipv4Net) -> usize {
        self.allocations
            .keys()
            .filter(|ip| subnet.contains(*ip))
            .count()
    }

    /// How many pod addresses `subnet` has in all (without network, broadcast, gateway).
    pub fn capacity(subnet: Ipv4Net) -> usize {
        (u32::from(subnet.broadcast()) - u32::from(subnet.network()) - 2) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(id: &str) -> Attachment {
        Attachment {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("net")
    }

    const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    #[test]
    fn hands_out_distinct_addresses_skipping_gateway() {
        let mut p = Pool::default();
        let a = p.allocate(net("10.0.0.0/24"), GW, &att("a")).expect("a");
        let b = p.allocate(net("10.0.0.0/24"), GW, &att("b")).expect("b");
        assert_eq!(a, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(b, Ipv4Addr::new(10, 0, 0, 3));
    }

    #[test]
    fn same_attachment_keeps_its_address() {
        let mut p = Pool::default();
        let a = p.allocate(net("10.0.0.0/24"), GW, &att("a")).expect("a");
        assert_eq!(p.allocate(net("10.0.0.0/24"), GW, &att("a")), Ok(a));
        assert_eq!(p.allocations.len(), 1);
        let other_if = Attachment {
            container_id: "a".into(),
            ifname: "eth1".into(),
        };
        assert_ne!(p.allocate(net("10.0.0.0/24"), GW, &other_if), Ok(a));
    }

    #[test]
    fn round_robin_does_not_reuse_a_freed_address_at_once() {
        let mut p = Pool::default();
        let subnet = net("10.0.0.0/24");
        let a = p.allocate(subnet, GW, &att("a")).expect("a");
        assert_eq!(p.release(&att("a")), Some(a));
        let b = p.allocate(subnet, GW, &att("b")).expect("b");
        assert_ne!(a, b);
        assert_eq!(b, Ipv4Addr::new(10, 0, 0, 3));
    }

    #[test]
    fn wraps_around_and_exhausts_with_counts() {
        let subnet = net("10.0.0.0/29");
        let mut p = Pool::default();
        assert_eq!(Pool::capacity(subnet), 5);
        let got: Vec<_> = (0..5)
            .map(|i| {
                p.allocate(subnet, GW, &att(&format!("c{i}")))
                    .expect("fits")
            })
            .collect();
        assert_eq!(got.first(), Some(&Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(got.last(), Some(&Ipv4Addr::new(10, 0, 0, 6)));
        assert_eq!(
            p.allocate(subnet, GW, &att("x")),
            Err(Exhausted { subnet, in_use: 5 })
        );
        p.release(&att("c1"));
        assert_eq!(
            p.allocate(subnet, GW, &att("x")),
            Ok(Ipv4Addr::new(10, 0, 0, 3))
        );
    }

    #[test]
    fn release_unless_keeps_only_valid_attachments() {
        let subnet = net("10.0.0.0/24");
        let mut p = Pool::default();
        for id in ["a", "b", "c"] {
            p.allocate(subnet, GW, &att(id)).expect("fits");
        }
        let freed = p.release_unless(|a| a.container_id == "b");
        assert_eq!(freed.len(), 2);
        assert_eq!(p.allocations.len(), 1);
        assert!(p.find(&att("b")).is_some());
    }

    #[test]
    fn cursor_outside_a_changed_subnet_restarts_at_the_beginning() {
        let mut p = Pool {
            last_reserved: Some(Ipv4Addr::new(192, 168, 0, 9)),
            ..Pool::default()
        };
        assert_eq!(
            p.allocate(net("10.0.0.0/24"), GW, &att("a")),
            Ok(Ipv4Addr::new(10, 0, 0, 2))
        );
    }
}
