//! The allocation table of one network on one node, and the rules for handing out
//! addresses. Pure: [`super::Store`] loads and saves it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::plugin::host_veth_name;
use crate::spec::Attachment;

/// Every address of a network that is in use, and where the round-robin cursor stands.
///
/// `pool.json` of earlier releases (allocations of only `containerID` and `ifname`) still
/// loads: every field added since has a default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    /// The address handed out last; the next search starts after it, so a just-freed
    /// address is not reused at once (stale ARP and conntrack entries would misdirect
    /// traffic to the new pod).
    #[serde(default)]
    pub last_reserved: Option<Ipv4Addr>,
    #[serde(default)]
    pub allocations: BTreeMap<Ipv4Addr, Allocation>,
}

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    /// Empty when a rebuild found the address on a host veth without learning which
    /// container it belongs to; `host_veth` names the holder then.
    #[serde(rename = "containerID", default)]
    pub container_id: String,
    #[serde(default)]
    pub ifname: String,
    /// The host veth holding the address, for an allocation a rebuild made without the
    /// container ID. Any attachment whose derived host veth name this is owns it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_veth: Option<String>,
    /// The pod's namespace as ADD was given it; a later ADD of the same attachment with
    /// another namespace is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<NetnsRef>,
}

/// A network namespace: the path the runtime gave, and its identity (nsfs device and
/// inode), which tells two namespaces apart even where paths are reused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsRef {
    pub path: String,
    pub dev: u64,
    pub ino: u64,
}

impl Allocation {
    pub fn new(attachment: &Attachment, netns: Option<NetnsRef>) -> Allocation {
        Allocation {
            container_id: attachment.container_id.clone(),
            ifname: attachment.ifname.clone(),
            host_veth: None,
            netns,
        }
    }

    /// Whether `attachment` owns this allocation.
    pub fn is_of(&self, attachment: &Attachment) -> bool {
        if self.container_id.is_empty() {
            self.host_veth.as_deref() == Some(host_veth_name(attachment).as_str())
        } else {
            self.container_id == attachment.container_id && self.ifname == attachment.ifname
        }
    }

    /// The name of the host veth that belongs to this allocation.
    pub fn host_veth(&self) -> String {
        match &self.host_veth {
            Some(name) if self.container_id.is_empty() => name.clone(),
            _ => host_veth_name(&self.attachment()),
        }
    }

    pub fn attachment(&self) -> Attachment {
        Attachment {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

/// An address a podnet host veth holds on the node, as a rebuild finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub ip: Ipv4Addr,
    pub host_veth: String,
    /// The attachment, where the veth's alias names it.
    pub attachment: Option<Attachment>,
}

/// The subnet has no free address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    pub subnet: Ipv4Net,
    pub in_use: usize,
}

impl Pool {
    /// The pool of what the node holds: one allocation per address a host veth holds.
    /// Where two veths claim one address (the node is already broken), the first keeps it.
    pub fn rebuilt(held: &[Held]) -> Pool {
        let mut pool = Pool::default();
        for h in held {
            let allocation = match &h.attachment {
                Some(a) => Allocation::new(a, None),
                None => Allocation {
                    container_id: String::new(),
                    ifname: String::new(),
                    host_veth: Some(h.host_veth.clone()),
                    netns: None,
                },
            };
            pool.allocations.entry(h.ip).or_insert(allocation);
        }
        // The old cursor is lost: continue after the highest address in use.
        pool.last_reserved = pool.allocations.keys().next_back().copied();
        pool
    }

    /// The address of `attachment` and its allocation, if it has one.
    pub fn find(&self, attachment: &Attachment) -> Option<(Ipv4Addr, &Allocation)> {
        self.allocations
            .iter()
            .find(|(_, a)| a.is_of(attachment))
            .map(|(ip, a)| (*ip, a))
    }

    /// Gives `attachment` an address in `subnet` (never `gateway`, the network or the
    /// broadcast address) and records `netns` with it. An attachment that already has one
    /// keeps it: a retried ADD after a crash gets the same address, never a second one.
    pub fn allocate(
        &mut self,
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
        attachment: &Attachment,
        netns: Option<NetnsRef>,
    ) -> Result<Ipv4Addr, Exhausted> {
        if let Some((ip, _)) = self.find(attachment) {
            // Learn the container ID of a rebuilt allocation, and the namespace.
            self.allocations
                .insert(ip, Allocation::new(attachment, netns));
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
            self.allocations
                .insert(ip, Allocation::new(attachment, netns));
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
        let (ip, _) = self.find(attachment)?;
        self.allocations.remove(&ip);
        Some(ip)
    }

    /// Frees every allocation `keep` rejects; returns what was freed.
    pub fn release_unless(
        &mut self,
        keep: impl Fn(&Allocation) -> bool,
    ) -> Vec<(Ipv4Addr, Allocation)> {
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

    fn alloc(p: &mut Pool, subnet: &str, a: &Attachment) -> Result<Ipv4Addr, Exhausted> {
        p.allocate(net(subnet), GW, a, None)
    }

    #[test]
    fn hands_out_distinct_addresses_skipping_gateway() {
        let mut p = Pool::default();
        let a = alloc(&mut p, "10.0.0.0/24", &att("a")).expect("a");
        let b = alloc(&mut p, "10.0.0.0/24", &att("b")).expect("b");
        assert_eq!(a, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(b, Ipv4Addr::new(10, 0, 0, 3));
    }

    #[test]
    fn same_attachment_keeps_its_address() {
        let mut p = Pool::default();
        let a = alloc(&mut p, "10.0.0.0/24", &att("a")).expect("a");
        assert_eq!(alloc(&mut p, "10.0.0.0/24", &att("a")), Ok(a));
        assert_eq!(p.allocations.len(), 1);
        let other_if = Attachment {
            container_id: "a".into(),
            ifname: "eth1".into(),
        };
        assert_ne!(alloc(&mut p, "10.0.0.0/24", &other_if), Ok(a));
    }

    #[test]
    fn round_robin_does_not_reuse_a_freed_address_at_once() {
        let mut p = Pool::default();
        let a = alloc(&mut p, "10.0.0.0/24", &att("a")).expect("a");
        assert_eq!(p.release(&att("a")), Some(a));
        let b = alloc(&mut p, "10.0.0.0/24", &att("b")).expect("b");
        assert_ne!(a, b);
        assert_eq!(b, Ipv4Addr::new(10, 0, 0, 3));
    }

    #[test]
    fn wraps_around_and_exhausts_with_counts() {
        let subnet = net("10.0.0.0/29");
        let mut p = Pool::default();
        assert_eq!(Pool::capacity(subnet), 5);
        let got: Vec<_> = (0..5)
            .map(|i| alloc(&mut p, "10.0.0.0/29", &att(&format!("c{i}"))).expect("fits"))
            .collect();
        assert_eq!(got.first(), Some(&Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(got.last(), Some(&Ipv4Addr::new(10, 0, 0, 6)));
        assert_eq!(
            alloc(&mut p, "10.0.0.0/29", &att("x")),
            Err(Exhausted { subnet, in_use: 5 })
        );
        p.release(&att("c1"));
        assert_eq!(
            alloc(&mut p, "10.0.0.0/29", &att("x")),
            Ok(Ipv4Addr::new(10, 0, 0, 3))
        );
    }

    #[test]
    fn release_unless_keeps_only_valid_attachments() {
        let mut p = Pool::default();
        for id in ["a", "b", "c"] {
            alloc(&mut p, "10.0.0.0/24", &att(id)).expect("fits");
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
            alloc(&mut p, "10.0.0.0/24", &att("a")),
            Ok(Ipv4Addr::new(10, 0, 0, 2))
        );
    }

    #[test]
    fn a_pool_of_the_previous_format_loads() {
        let old = br#"{"lastReserved":"10.0.0.3","allocations":{
            "10.0.0.2":{"containerID":"a","ifname":"eth0"},
            "10.0.0.3":{"containerID":"b","ifname":"net1"}}}"#;
        let p: Pool = serde_json::from_slice(old).expect("loads");
        assert_eq!(p.last_reserved, Some(Ipv4Addr::new(10, 0, 0, 3)));
        assert_eq!(
            p.find(&att("a")).map(|f| f.0),
            Some(Ipv4Addr::new(10, 0, 0, 2))
        );
        let b = Attachment {
            container_id: "b".into(),
            ifname: "net1".into(),
        };
        assert_eq!(p.find(&b).map(|f| f.1.netns.clone()), Some(None));
    }

    #[test]
    fn a_rebuilt_pool_holds_what_the_node_holds_and_learns_container_ids() {
        let ip = |d| Ipv4Addr::new(10, 0, 0, d);
        let held = [
            Held {
                ip: ip(9),
                host_veth: host_veth_name(&att("a")),
                attachment: Some(att("a")),
            },
            Held {
                ip: ip(4),
                host_veth: host_veth_name(&att("old")),
                attachment: None,
            },
            // Two veths claiming one address: the first keeps it.
            Held {
                ip: ip(4),
                host_veth: host_veth_name(&att("dup")),
                attachment: None,
            },
        ];
        let mut p = Pool::rebuilt(&held);
        assert_eq!(p.allocations.len(), 2);
        assert_eq!(p.last_reserved, Some(ip(9)));
        // The veth without an alias is found again by its attachment's derived name.
        assert_eq!(p.find(&att("old")).map(|f| f.0), Some(ip(4)));
        assert_eq!(p.find(&att("dup")), None);
        assert_eq!(alloc(&mut p, "10.0.0.0/24", &att("old")), Ok(ip(4)));
        assert_eq!(p.allocations[&ip(4)].container_id, "old");
        // The next fresh address comes after the highest held one.
        assert_eq!(alloc(&mut p, "10.0.0.0/24", &att("new")), Ok(ip(10)));
    }
}
